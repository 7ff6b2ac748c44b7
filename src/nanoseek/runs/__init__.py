"""The run directory: layout, checkpoints, plots and the report."""
