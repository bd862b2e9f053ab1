"""The MU-Diff library, in layers: core < data < model < eval < train, infer < brasyn (imports point down)."""
import sys

# Every script imports this package first, so an old interpreter gets one line here instead of a late TypeError
# from an `X | None` annotation.
if sys.version_info < (3, 10):
    sys.exit(f"error: MU-Diff needs Python 3.10 or newer, this is {sys.version.split()[0]}; run it with a newer "
             "python3 (e.g. `make PYTHON=python3.11 test`)")
