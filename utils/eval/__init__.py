"""Evaluation: metric protocols, results folders, plots and comparisons (training's validation uses them)."""
