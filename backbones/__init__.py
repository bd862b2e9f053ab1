"""MU-Diff networks in pure PyTorch: the two generators, the shared critic and its attention projection."""
from backbones.discriminator import AttentionProjection, Discriminator_large, build_critic
from backbones.fast_paths import condition_feature_cache, fast_paths, fast_paths_enabled, set_fast_paths
from backbones.ncsnpp_generator_adagn_feat import NCSNpp, NCSNpp_adaptive, build_generators

__all__ = ["NCSNpp", "NCSNpp_adaptive", "Discriminator_large", "AttentionProjection", "build_generators",
           "build_critic", "condition_feature_cache", "fast_paths", "fast_paths_enabled", "set_fast_paths"]
