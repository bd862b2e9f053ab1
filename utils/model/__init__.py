"""Model support: the diffusion process, checkpoints and speed options (networks live in backbones/)."""
