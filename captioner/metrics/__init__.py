"""Metrics the training loop computes itself (CIDEr-D for SCST rewards and model selection)."""
