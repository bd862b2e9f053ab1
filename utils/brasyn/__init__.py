"""BraSyn missing-modality tasks: drop, complete and score whole cases."""
