"""Bottom layer: errors, file I/O, options and the on-disk contract."""
