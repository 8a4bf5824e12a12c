"""Training stages (SFT, GRPO) and the GRPO reward functions."""
