"""The Python entry point for notebooks and pipelines: load an experiment once, complete any number of cases.

    from utils.infer.synthesizer import Synthesizer
    synth = Synthesizer.load("results/exp_brats")                 # config.json says the contrasts and shapes
    case = synth.infer_single(flair="c_flair.nii.gz", t2="c_t2.nii.gz", t1="c_t1.nii.gz",
                              output_file="c_t1ce.nii.gz")        # or arrays; case.maps["synth"] is the volume
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from utils.core.errors import UserError
from utils.core.runtime import seed_everything
from utils.infer.experiment import Experiment, describe, experiment_args, load_experiment
from utils.infer.volumes import CaseSynthesis, VolumeSampling, save_case, synthesize_case
from utils.model.speed import SpeedOptions

Image = str | Path | np.ndarray


class Synthesizer:
    """A trained MU-Diff experiment, ready to synthesise its target contrast for whole cases."""

    def __init__(self, experiment: Experiment, batch_size: int = 4, sampling: VolumeSampling = VolumeSampling()
                 ) -> None:
        """Wrap an already loaded experiment (see `load` to open a folder); `sampling`: how slices are stacked."""
        self.experiment = experiment
        self.batch_size = batch_size
        self.sampling = sampling

    @classmethod
    def load(cls, exp_dir: str | Path, epoch: int | str | None = None, device: str = "auto",
             with_critic: bool = False, batch_size: int = 4, speed: SpeedOptions | None = None,
             **overrides: object) -> Synthesizer:
        """Open OUTPUT_PATH/EXP (its config.json gives the contrasts, shapes and T); `with_critic` for its map.

        `overrides` set options for a folder without config.json, e.g. the published weights (`num_timesteps=4`).
        """
        args = experiment_args(exp_dir, epoch, device, **overrides)
        for key, value in vars(speed or SpeedOptions()).items():
            setattr(args, key, value)
        return cls(load_experiment(args, with_critic=with_critic), batch_size)

    @property
    def inputs(self) -> list[str]:
        """The three conditioning contrasts, in the order the networks take them."""
        return self.experiment.contrasts[:3]

    @property
    def target(self) -> str:
        """The contrast this experiment synthesises."""
        return self.experiment.contrasts[3]

    def describe(self) -> str:
        """One line naming the checkpoints, the contrast order, T and the device."""
        return describe(self.experiment)

    def conditions(self, images: dict[str, Image]) -> list[Image]:
        """The three inputs in network order from keyword names (contrast names, any case); UserError otherwise."""
        given = {name.lower(): value for name, value in images.items()}
        wanted = [name.lower() for name in self.inputs]
        if sorted(given) != sorted(wanted):
            raise UserError(f"this experiment takes {', '.join(wanted)} (as keyword arguments), got "
                            f"{', '.join(given) or 'nothing'}")
        return [given[name] for name in wanted]

    def infer_single(self, output_file: str | Path | None = None, uncertainty: bool = False,
                     slices: Sequence[int] | None = None, seed: int | None = None,
                     progress: Callable = tqdm, **images: Image) -> CaseSynthesis:
        """Synthesise one case from its three inputs (NIfTI paths or (H, W, D) arrays, keyed by contrast name).

        Returns the volumes (target and, with `uncertainty`, its maps) in [0, 1] on the inputs' grid; writes them as
        NIfTI when `output_file` is given (maps beside it as <name>_<map>.nii.gz). `seed` reseeds the sampler first,
        so a case's result does not depend on what ran before it.
        """
        conditions = self.conditions(images)
        if seed is not None:
            seed_everything(seed)
        case = synthesize_case(self.experiment, conditions, self.batch_size, uncertainty, slice_indices=slices,
                               progress=progress, sampling=self.sampling)
        if output_file is not None:
            save_case(case, output_file)
        return case
