"""The MU-Diff library, in layers: core < data < model < eval < train, infer < brasyn (imports point down)."""
