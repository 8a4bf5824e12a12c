"""Writing files so a kill or a concurrent run never leaves a torn file or damages the last good output."""
