"""Where a process runs: its rank in a multi-process job and the device it owns (no Dagster, no training code)."""
