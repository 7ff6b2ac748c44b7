"""Recipes: R1-Zero, the four-stage R1 pipeline, SFT, rejection sampling, distillation, pretraining."""
