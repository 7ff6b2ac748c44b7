"""Evaluation: pass@1 over k samples, pass@k, cons@k, for local models and endpoints."""
