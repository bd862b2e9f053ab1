"""Training: the step, the loop, EMA, logs, resume and process launch."""
