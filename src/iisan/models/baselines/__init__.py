"""Baseline item towers trained with the same user encoder, loss and metrics as IISAN."""
