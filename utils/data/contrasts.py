"""Contrast names and the datasets' README contrast orders (which contrast is synthesised from which)."""
from dataclasses import dataclass
from typing import Sequence

from utils.core.errors import UserError

# Spellings seen in datasets (t1n, t1c, t2w, t2f: BraTS 2023), forks and the original code, mapped to the names
# pre_process.py writes.
CONTRAST_ALIASES = {
    "t1": "T1", "t1w": "T1", "t1n": "T1",
    "t1ce": "T1ce", "t1c": "T1ce", "t1gd": "T1ce", "t1-ce": "T1ce", "t1_ce": "T1ce", "t1post": "T1ce",
    "t2": "T2", "t2w": "T2",
    "flair": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR", "t2-flair": "FLAIR", "t2_flair": "FLAIR",
    "dwi": "DWI",
}


def canonical_contrast(name: str) -> str:
    """The standard spelling of a known contrast name (`flair` -> `FLAIR`); other names are returned unchanged."""
    return CONTRAST_ALIASES.get(name.strip().lower(), name.strip())


@dataclass(frozen=True)
class DatasetPresets:
    """A dataset family's README tasks: [cond1, cond2, cond3, target] orders keyed by target, and the default."""

    name: str
    orders: dict[str, tuple[str, ...]]
    default_target: str


# The orders the published weights were trained with (the original README's tasks).
PRESETS = {
    "brats": DatasetPresets("BraTS", {
        "T1ce": ("FLAIR", "T2", "T1", "T1ce"),
        "FLAIR": ("T1ce", "T1", "T2", "FLAIR"),
        "T2": ("T1ce", "T1", "FLAIR", "T2"),
        "T1": ("FLAIR", "T1ce", "T2", "T1"),
    }, "T1ce"),
    "isles": DatasetPresets("ISLES", {
        "FLAIR": ("T1", "T2", "DWI", "FLAIR"),
        "T1": ("T2", "DWI", "FLAIR", "T1"),
    }, "FLAIR"),
}


def dataset_presets(dataset: str) -> DatasetPresets:
    """The presets of --dataset, or a one-line error naming the choices."""
    name = str(dataset).lower()
    if name not in PRESETS:
        raise UserError(f"unknown --dataset {dataset!r}; use brats or isles, or give the order with --contrasts")
    return PRESETS[name]


def presets(dataset: str) -> dict[str, list[str]]:
    """The README's contrast orders of a dataset, keyed by target: {target: [cond1, cond2, cond3, target]}."""
    return {target: list(order) for target, order in dataset_presets(dataset).orders.items()}


def resolve_contrasts(dataset: str | None, target: str | None = None,
                      contrasts: Sequence[str] | None = None) -> list[str]:
    """The contrast order [cond1, cond2, cond3, target] from --contrasts, or the dataset preset for --target."""
    if contrasts:
        order = [c.strip() for c in contrasts]
        if len(order) != 4 or any(not c for c in order):
            raise UserError(f"--contrasts needs four names (three conditions, then the target), got {list(contrasts)}")
        if len({c.lower() for c in order}) != 4:
            raise UserError(f"--contrasts {' '.join(order)} names a contrast twice; give four different ones")
        if target and target.strip().lower() != order[3].lower():
            raise UserError(f"--target {target} disagrees with --contrasts (whose last name, {order[3]}, is the "
                            "target); drop one of the two")
        return order
    family = dataset_presets(dataset or "")
    table = presets(dataset)
    wanted = canonical_contrast(target) if target else family.default_target
    for key, order in table.items():
        if key.lower() == wanted.lower():
            return order
    raise UserError(f"--target {target} is not one of the {family.name} tasks ({', '.join(table)}); "
                    "pick one of them or give any order with --contrasts C1 C2 C3 TARGET")


def contrasts_from_args(args) -> list[str]:
    """The contrast order chosen by --dataset/--target/--contrasts (options from utils.core.options.add_data_args)."""
    return resolve_contrasts(getattr(args, "dataset", None), getattr(args, "target", None),
                             getattr(args, "contrasts", None))
