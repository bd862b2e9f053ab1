"""Inference: loading an experiment, sampling, baselines, volumes and test.py's outputs."""
