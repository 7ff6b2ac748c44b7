"""Supervised training: next-token pretraining, SFT, and the optimizer they share."""
