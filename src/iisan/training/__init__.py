"""Training: the in-batch loss, the loop, checkpoints."""
