"""Data: contrasts, NIfTI I/O, dataset layouts, preprocessing, model-space geometry and the slice dataset."""
