"""The 3-D refiner (backbones/refiner.py, utils/infer/refiner.py, utils/brasyn/refine.py) on tensors."""
import pytest
import torch

from backbones.refiner import VolumeRefiner
from utils.brasyn.refine import RefinerSettings, TrainingStack, random_crops, stack_l1, train_refiner
from utils.core.errors import UserError
from utils.infer.refiner import refine_stack, refiner_input

pytestmark = pytest.mark.usefixtures("one_thread")

DEPTH, SIZE = 12, 16


def _striped_stacks(count: int, seed: int) -> list[TrainingStack]:
    """Smooth truths; the 'synthesis' is the truth plus a brightness offset that changes from slice to slice."""
    generator = torch.Generator().manual_seed(seed)
    stacks = []
    for i in range(count):
        ramp = torch.linspace(-0.6, 0.6, SIZE)
        truth = (ramp[None, None, :, None] * ramp[None, None, None, :] + 0.1 * i).expand(1, DEPTH, SIZE, SIZE)
        stripes = 0.3 * (torch.rand(1, DEPTH, 1, 1, generator=generator) - 0.5)
        synth = truth + stripes
        conditions = truth.expand(3, DEPTH, SIZE, SIZE)
        stacks.append(TrainingStack(f"case{i}", torch.cat([synth, conditions]), truth.clone(),
                                    torch.ones(1, DEPTH, SIZE, SIZE, dtype=torch.bool)))
    return stacks


def test_an_untrained_refiner_returns_the_synthesis() -> None:
    """The last convolution starts at zero: before training, refining changes nothing (inside [-1, 1])."""
    synth = torch.rand(DEPTH, 1, SIZE, SIZE) * 2 - 1
    conditions = torch.rand(DEPTH, 3, SIZE, SIZE)
    refined = refine_stack(VolumeRefiner(width=4, blocks=2).eval(), synth, conditions, list(range(5, 5 + DEPTH)))
    torch.testing.assert_close(refined, synth, rtol=0, atol=0)
    assert refiner_input(synth, conditions).shape == (1, 4, DEPTH, SIZE, SIZE)


def test_refining_needs_consecutive_slices() -> None:
    """A chosen subset of slices (a preview) cannot be refined across slices: one clear error."""
    with pytest.raises(UserError, match="consecutive slices"):
        refine_stack(VolumeRefiner(4, 1), torch.zeros(3, 1, SIZE, SIZE), torch.zeros(3, 3, SIZE, SIZE), [1, 2, 5])


def test_random_crops_are_aligned_runs_of_slices() -> None:
    """Input, truth and brain of a crop come from the same consecutive slices of one case (flipped together)."""
    stacks = _striped_stacks(2, seed=0)
    inputs, truth, brain, lesion = random_crops(stacks, depth=5, count=6, generator=torch.Generator().manual_seed(1))
    assert inputs.shape == (6, 4, 5, SIZE, SIZE)
    assert truth.shape == brain.shape == lesion.shape == (6, 1, 5, SIZE, SIZE) and not lesion.any()
    torch.testing.assert_close(inputs[:, 1:2], truth)  # the conditions are the truth in these stacks


def test_training_removes_slice_to_slice_stripes() -> None:
    """Fitted on striped stacks, the refiner removes most of the stripes of striped stacks it has not seen."""
    settings = RefinerSettings(width=8, blocks=2, steps=150, crop_slices=8, crops_per_step=2, lr=2e-3, seed=0,
                               through_plane_weight=1.0)
    network, log = train_refiner(_striped_stacks(3, seed=0), settings, torch.device("cpu"))
    held_out = _striped_stacks(2, seed=5)
    before, after = stack_l1(None, held_out, torch.device("cpu")), stack_l1(network, held_out, torch.device("cpu"))
    assert after < 0.5 * before, (before, after)
    assert [row["step"] for row in log][-1] == settings.steps and log[-1]["loss"] < log[0]["loss"]


def _dimmed_lesion_stacks(count: int, seed: int) -> list[TrainingStack]:
    """Truths with a small bright lesion; the 'synthesis' shows it at a third of its brightness, and stripes."""
    generator = torch.Generator().manual_seed(seed)
    stacks = []
    for i in range(count):
        lesion = torch.zeros(1, DEPTH, SIZE, SIZE, dtype=torch.bool)
        r, c = (int(v) for v in torch.randint(2, SIZE - 6, (2,), generator=generator))
        lesion[:, 4:8, r:r + 2, c:c + 2] = True
        truth = -0.4 + 0.9 * lesion.float()
        stripes = 0.4 * (torch.rand(1, DEPTH, 1, 1, generator=generator) - 0.5)
        synth = -0.4 + 0.3 * lesion.float() + stripes
        conditions = (truth + 0.1 * i).expand(3, DEPTH, SIZE, SIZE)
        stacks.append(TrainingStack(f"case{i}", torch.cat([synth, conditions]), truth,
                                    torch.ones(1, DEPTH, SIZE, SIZE, dtype=torch.bool), lesion))
    return stacks


def _lesion_l1(network: VolumeRefiner, stacks: list[TrainingStack]) -> float:
    """Mean |refined - truth| over the lesion voxels of the stacks."""
    with torch.no_grad():
        errors = [(network(s.inputs[None]) - s.truth[None]).abs()[s.lesion[None]] for s in stacks]
    return float(torch.cat(errors).mean())


def test_the_lesion_weight_makes_the_refiner_restore_the_lesion() -> None:
    """--lesion_weight: at the same budget the refiner learns more of the lesion's dimmed enhancement than with
    every brain voxel alike, on stacks it has not seen."""
    common = dict(width=8, blocks=2, steps=30, crop_slices=8, crops_per_step=2, lr=2e-3, seed=0,
                  through_plane_weight=0.0)
    train, held_out = _dimmed_lesion_stacks(3, seed=0), _dimmed_lesion_stacks(2, seed=7)
    errors = {}
    for weight in (0.0, 20.0):
        network, _ = train_refiner(train, RefinerSettings(**common, lesion_weight=weight), torch.device("cpu"))
        errors[weight] = _lesion_l1(network, held_out)
    assert errors[20.0] < 0.5 * errors[0.0], errors
