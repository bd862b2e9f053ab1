"""brasyn.py's subcommands run from parsed options (MONAI is imported only by segment)."""
from __future__ import annotations

import argparse

from utils.brasyn.complete import complete_cases
from utils.brasyn.drop import drop_modalities
from utils.brasyn.refine import refine_models
from utils.brasyn.score import score_cases
from utils.seg.nnunet import export_nnunet


def _segment(args: argparse.Namespace) -> list[dict]:
    """brasyn.py segment; imported here so the other subcommands do not wait seconds for MONAI to load."""
    from utils.seg.check import segment_cases

    return segment_cases(args)


def run_brasyn(args: argparse.Namespace) -> list[dict]:
    """Run the subcommand `args.command`; returns its per-case rows."""
    run = {"drop": drop_modalities, "complete": complete_cases, "refine": refine_models, "score": score_cases,
           "segment": _segment, "export": export_nnunet}[args.command]
    return run(args)
