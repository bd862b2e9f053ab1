"""The downstream segmentation check (brasyn.py segment) and the nnU-Net v2 export (brasyn.py export)."""
