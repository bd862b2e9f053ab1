"""Metrics: the paper's protocol against a hand-worked reference, plain metrics, image I/O and the metric_calc CLI."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metric_cli
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchvision.utils import save_image

from utils.core.errors import UserError, run_cli
from utils.core.fileio import natural_key, save_npy
from utils.data.images import read_image, read_mask, save_png16
from utils.eval.metrics import (
    PROTOCOL_TITLES,
    as_saved_image,
    mask_box,
    original_saved_levels,
    paper_metrics,
    percentile_minmax,
    plain_metrics,
    saved_image_metrics,
    summarize,
)
from utils.eval.results import EvalSet, evaluate_folder, evaluate_set, load_results_folder

ROOT = Path(__file__).resolve().parents[1]


def save_png8(array01: np.ndarray, path: Path) -> None:
    """Write a [0, 1] image as an 8-bit grayscale PNG (masks and 8-bit inputs for the readers), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array01, 0.0, 1.0) * 255).astype(np.uint8)).save(path, format="PNG")


def brain_phantom(size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] disc with texture on a zero background, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    image = mask * np.clip(0.5 + 0.3 * np.sin(xx / 3.0) + 0.1 * rng.standard_normal((size, size)), 0.05, 1.0)
    return image, mask


# --------------------------------------------------------------------------- protocol
def test_identical_images_give_ssim_one_mae_zero_and_infinite_psnr() -> None:
    """Identical images: SSIM 1, MAE 0, PSNR inf for both the paper protocol and the plain metrics."""
    image, mask = brain_phantom()
    for scores in (paper_metrics(image, image, mask), plain_metrics(image, image), plain_metrics(image, image, mask)):
        assert scores["ssim"] == pytest.approx(1.0)
        assert scores["mae"] == 0.0
        assert scores["psnr"] == math.inf


def test_plain_psnr_matches_formula_for_known_noise() -> None:
    """Adding ±0.05 to every pixel gives MSE 0.0025, so PSNR = 10·log10(1/0.0025) with data_range 1."""
    rng = np.random.default_rng(1)
    real = rng.uniform(0.2, 0.8, (16, 16))
    signs = np.where(rng.random((16, 16)) < 0.5, -1.0, 1.0)
    synth = real + 0.05 * signs
    scores = plain_metrics(real, synth)
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-9)
    assert scores["mae"] == pytest.approx(0.05, abs=1e-12)
    expected_ssim = structural_similarity(synth, real, data_range=1.0)
    assert scores["ssim"] == pytest.approx(expected_ssim, abs=1e-12)


def test_plain_metrics_with_mask_use_only_masked_pixels() -> None:
    """A mask restricts PSNR/MAE to its pixels; an all-ones mask equals no mask; an empty mask gives NaN."""
    real, _ = brain_phantom(seed=2)
    synth = real.copy()
    synth[:, :8] += 0.1  # errors only in the left third
    right = np.zeros(real.shape, dtype=bool)
    right[:, 12:] = True
    assert plain_metrics(real, synth, right)["mae"] == 0.0
    assert plain_metrics(real, synth, right)["psnr"] == math.inf
    full = plain_metrics(real, synth, np.ones(real.shape))
    for key, value in plain_metrics(real, synth).items():
        assert full[key] == pytest.approx(value, abs=1e-12)
    assert all(math.isnan(v) for v in plain_metrics(real, synth, np.zeros(real.shape)).values())


def test_metric_calc_psnr_matches_formula_on_hand_constructed_case() -> None:
    """The original metric_calc step on two-level images with exact normalisation: values {0, 2}, 2 pixels flipped.

    Real has 32 pixels at 1 and 32 at 2 (no zeros), so the 1/99 percentiles are 1 and 2, the clip does nothing and
    min–max gives {0, 1} with mean 0.5, hence x / mean ∈ {0, 2}. Synth swaps one 1 and one 2. With a full mask the
    crop is the whole 8×8 image: data_range = 2, MSE = 2·2²/64 = 1/8, PSNR = 10·log10(4·8), MAE = 2/64.
    """
    real = np.ones((8, 8))
    real[:, 4:] = 2.0
    synth = real.copy()
    synth[0, 0], synth[0, 7] = 2.0, 1.0
    scores = saved_image_metrics(real / 2, synth / 2, np.ones((8, 8)))
    assert scores["psnr"] == pytest.approx(10 * math.log10(32.0), abs=1e-9)
    assert scores["mae"] == pytest.approx(2 / 64, abs=1e-12)


def test_mask_box_grows_to_seven_and_stays_inside_the_image() -> None:
    """Boxes grow to 7 (the extra pixel of an even growth goes after), shift inwards at borders, big boxes stay."""
    def box_of(points: list[tuple[int, int]], shape: tuple[int, int] = (12, 12)) -> tuple[slice, slice]:
        mask = np.zeros(shape, dtype=bool)
        for r, c in points:
            mask[r, c] = True
        return mask_box(mask)

    assert box_of([(5, 5)]) == (slice(2, 9), slice(2, 9))
    assert box_of([(5, 5), (6, 5)]) == (slice(3, 10), slice(2, 9))  # height 2: 2 rows above, 3 below
    assert box_of([(0, 0)]) == (slice(0, 7), slice(0, 7))
    assert box_of([(11, 11)]) == (slice(5, 12), slice(5, 12))
    assert box_of([(1, 3), (10, 3)]) == (slice(1, 11), slice(0, 7))
    assert box_of([(3, 3)], shape=(7, 7)) == (slice(0, 7), slice(0, 7))
    assert mask_box(np.zeros((12, 12), dtype=bool)) is None


def test_metric_calc_step_matches_step_by_step_reference() -> None:
    """The original metric_calc.py's scoring, worked by hand with numpy and skimage on a 12×12 slice with a 2×3 mask;
    paper_metrics is that scoring of the saved 8-bit images."""
    rng = np.random.default_rng(3)
    real = np.zeros((12, 12))
    real[1:11, 1:11] = rng.uniform(0.1, 1.0, (10, 10))
    synth = np.clip(real + 0.1 * rng.standard_normal((12, 12)), 0, 1) * (real > 0)
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[4:6, 6:9] = 1  # rows 4..5 (height 2), columns 6..8 (width 3)

    def normalise(x: np.ndarray) -> np.ndarray:
        """Step 1 by hand: percentile clip over the non-zero pixels, then min–max."""
        low, high = np.percentile(x[x > 0], [1, 99])
        clipped = np.clip(x, low, high)
        return (clipped - clipped.min()) / (clipped.max() - clipped.min())

    real_n, synth_n = normalise(real), normalise(synth)
    real_p, synth_p = real_n / real_n.mean(), synth_n / synth_n.mean()
    # Height 2 → 7: 5 extra rows, 2 above and 3 below → rows 2..8. Width 3 → 7: 2 left, 2 right → columns 4..10.
    rows, cols = slice(2, 9), slice(4, 11)
    m = mask[rows, cols]
    real_pc, synth_pc = real_p[rows, cols] * m, synth_p[rows, cols] * m
    data_range = max(real_pc.max(), synth_pc.max()) - min(real_pc.min(), synth_pc.min())
    expected = {
        "ssim": structural_similarity(synth_pc, real_pc, data_range=data_range),
        "psnr": peak_signal_noise_ratio(real_pc, synth_pc, data_range=data_range),
        "mae": np.mean(np.abs(real_n[rows, cols] * m - synth_n[rows, cols] * m)),
    }
    scores = saved_image_metrics(real, synth, mask)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # The scoring is scale-free: the same slice stored as 8-bit-like levels gives the same numbers.
    assert saved_image_metrics(real * 255, synth * 255, mask * 255)["ssim"] == pytest.approx(expected["ssim"], rel=1e-9)
    saved = original_saved_levels(real), original_saved_levels(synth)
    assert paper_metrics(real, synth, mask) == saved_image_metrics(*saved, mask)
    assert paper_metrics(*saved, mask) == saved_image_metrics(*saved, mask)  # 8-bit images are already saved


def test_all_zero_image_does_not_crash() -> None:
    """A blank synthesis (the original crashed on np.percentile of nothing) scores, and scores badly."""
    real, mask = brain_phantom()
    assert not percentile_minmax(np.zeros((8, 8))).any()
    scores = paper_metrics(real, np.zeros_like(real), mask)
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["ssim"] < 0.1 and scores["mae"] > 0.1


def test_empty_mask_is_nan_and_skipped_in_the_mean() -> None:
    """A slice whose lesion mask is empty gets NaN and does not enter mean ± std."""
    real, brain = brain_phantom()
    synth = np.clip(real + 0.05, 0, 1) * brain
    lesion = np.zeros((2,) + real.shape)
    lesion[0, 10:13, 10:13] = 1
    rows = evaluate_set(EvalSet(["a", "b"], [real, real], [synth, real], [brain, brain], lesion), progress=False)
    assert all(math.isnan(rows[1][f"lesion_{m}"]) for m in ("ssim", "psnr", "mae"))
    stats = summarize(rows)
    assert stats["lesion_mae"].n == 1 and stats["lesion_mae"].n_nan == 1
    assert stats["lesion_mae"].mean == pytest.approx(rows[0]["lesion_mae"])
    assert stats["brain_mae"].mean == pytest.approx((rows[0]["brain_mae"] + 0.0) / 2)


def test_summarize_excludes_infinite_psnr_and_formats_mean_std() -> None:
    """inf is counted and left out; nanstd is the population std like the original; text is 'mean ± std'."""
    summary = summarize([20.0, math.inf, 30.0, math.nan])
    assert (summary.mean, summary.std, summary.n, summary.n_inf, summary.n_nan) == (25.0, 5.0, 2, 1, 1)
    assert str(summary) == "25.000 ± 5.000"
    assert str(summarize([math.inf])) == "inf (identical)"
    assert str(summarize([math.nan])) == "n/a"


# --------------------------------------------------------------------------- the original pipeline
REGIONS = ("brain", "lesion")
from utils.infer.outputs import SampleWriter, _to_original, synth_to_original  # noqa: E402


def test_saving_step_is_torchvision_save_image(tmp_path: Path) -> None:
    """original_saved_levels gives the pixels the original test.py wrote: save_image(x / x.mean(), normalize=True)."""
    rng = np.random.default_rng(6)
    disc, mask = brain_phantom(size=40, seed=7)
    # A generator-like slice: its background sits just above 0 ((x + 1) / 2 of tanh ≈ −0.99), never at 0.
    generated = np.where(mask, disc, 0.004 + 0.0005 * rng.random(disc.shape))
    for i, image in enumerate((rng.random((40, 36)), disc, generated)):
        tensor = torch.from_numpy(image.astype(np.float32))[None, None]
        save_image(tensor / tensor.mean(), tmp_path / f"{i}.png", normalize=True)
        written = np.asarray(Image.open(tmp_path / f"{i}.png"))
        np.testing.assert_array_equal(original_saved_levels(image), written[..., 0])
    # The min–max and the rounding send that background to exactly 0: it leaves the non-zero percentile set.
    assert not original_saved_levels(generated)[~mask].any()


def assert_original_numbers(scores: dict[str, dict[str, list[float]]], expected: dict) -> float:
    """Per slice, region and metric: NaN exactly where the original gives NaN, else within 1e-6 relative.

    Returns the largest relative difference.
    """
    worst = 0.0
    for region in REGIONS:
        for metric in ("ssim", "psnr", "mae"):
            ours, theirs = np.asarray(scores[region][metric], float), np.asarray(expected[region][metric], float)
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{region} {metric} NaN")
            known = ~np.isnan(theirs)
            np.testing.assert_allclose(ours[known], theirs[known], rtol=1e-6, err_msg=f"{region} {metric}")
            worst = max(worst, float(np.max(np.abs(ours[known] / theirs[known] - 1))))
    return worst


def to_unit(model_space: torch.Tensor) -> np.ndarray:
    """The original's to_range_0_1, (x + 1) / 2, of (N, 1, H, W) model outputs, as float32 (N, H, W)."""
    return ((model_space[:, 0] + 1.) / 2.).numpy()


def test_paper_protocol_reproduces_the_original_pipeline(metric_ref: dict) -> None:
    """On the fixture's model outputs paper_metrics gives, per slice, what the original test.py + metric_calc.py
    report with lossless 8-bit files (path 'png'); scoring the floats without the saving step does not."""
    real, synth = to_unit(metric_ref["real_model"]), to_unit(metric_ref["synth_model"])
    scores = {r: {"ssim": [], "psnr": [], "mae": []} for r in REGIONS}
    unsaved = []
    for i in range(len(real)):
        for region in REGIONS:
            mask = metric_ref[f"{region}_mask"][i].numpy()
            for metric, value in paper_metrics(real[i], synth[i], mask).items():
                scores[region][metric].append(value)
            if region == "lesion" and mask.any():
                unsaved.append(saved_image_metrics(real[i], synth[i], mask)["psnr"])
    assert_original_numbers(scores, metric_ref["expected"]["png"])
    assert np.nanmean(metric_ref["expected"]["png"]["lesion"]["psnr"]) - np.mean(unsaved) > 1.0


def write_fixture_results(metric_ref: dict, folder: Path) -> None:
    """The fixture's outputs written as test.py writes a results folder (same functions, same layout)."""
    height_width = tuple(metric_ref["real_model"].shape[-2:])
    images = {"real": _to_original(metric_ref["real_model"], height_width, False),
              "synth": synth_to_original(metric_ref["synth_model"], height_width)}
    for region in REGIONS:
        masks = metric_ref[f"{region}_mask"][:, None].float()
        images[f"{region}_mask"] = (_to_original(masks, height_width, True) > 0.5).astype(np.float32)
    with SampleWriter(folder, list(images), len(images["real"]), height_width) as writer:
        for i in range(len(images["real"])):
            writer.write(i, {name: stack[i] for name, stack in images.items()})


def csv_scores(path: Path) -> dict[str, dict[str, list[float]]]:
    """Per-slice paper-protocol columns of metrics_per_slice.csv as {region: {metric: values}}."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {r: {m: [float(row[f"{r}_{m}"]) for row in rows] for m in ("ssim", "psnr", "mae")} for r in REGIONS}


def test_metric_calc_on_a_results_folder_prints_the_original_numbers(metric_ref: dict, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """metric_calc.py on a results folder built from the fixture's outputs prints, and writes per slice, the
    original's numbers (path 'png') from the float stacks; the 16-bit PNGs give nearly the same 8-bit images."""
    write_fixture_results(metric_ref, tmp_path / "exp" / "generated_samples")
    assert run_cli(metric_cli, [str(tmp_path / "exp"), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    expected = metric_ref["expected"]["png"]
    out = tmp_path / "exp" / "generated_samples" / "metrics"
    assert_original_numbers(csv_scores(out / "metrics_per_slice.csv"), expected)
    summary = json.loads((out / "metrics_summary.json").read_text())["metrics"]
    for region in REGIONS:
        row = next(line for line in printed.splitlines() if line.startswith(PROTOCOL_TITLES[region]))
        for metric in ("psnr", "ssim", "mae"):
            values = np.asarray(expected[region][metric], float)
            mean, std = np.nanmean(values), np.nanstd(values)
            assert f"{mean:.3f} ± {std:.3f}" in row
            assert summary[f"{region}_{metric}"]["mean"] == pytest.approx(mean, rel=1e-6)
    stacks = load_results_folder(tmp_path / "exp")
    for name in ("real.npy", "synth.npy"):
        (tmp_path / "exp" / "generated_samples" / name).unlink()
    pngs = load_results_folder(tmp_path / "exp")
    assert "image files" in pngs.source
    for i in range(len(stacks.names)):
        for name in ("real", "synth"):
            exact, rounded = (as_saved_image(getattr(data, name)[i]).astype(int) for data in (stacks, pngs))
            # The PNGs' 16-bit rounding moves a pixel that lies near an 8-bit boundary by one level, rarely.
            assert np.abs(exact - rounded).max() <= 1 and np.mean(exact != rounded) < 0.002


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_the_originals_own_files_score_as_it_scored_them(metric_ref: dict, tmp_path: Path, kind: str) -> None:
    """Folders of the original's 8-bit files (torchvision save_image of x / mean with normalize=True, as its test.py
    saved them; PNG, or its JPEG with Pillow's defaults) are scored as they are: the fixture's 'png' or 'jpeg' path."""
    suffix = {"png": "png", "jpeg": "jpg"}[kind]
    for i in range(len(metric_ref["real_model"])):
        for name in ("real", "synth"):
            unit = (metric_ref[f"{name}_model"][i:i + 1] + 1.) / 2.
            (tmp_path / name).mkdir(exist_ok=True)
            save_image(unit / unit.mean(), tmp_path / name / f"test_samples_{i}.{suffix}", normalize=True)
        for region in REGIONS:
            mask = metric_ref[f"{region}_mask"][i].numpy().astype(float)
            save_png8(mask, tmp_path / region / f"test_samples_{i}.png")
    argv = ["--real", str(tmp_path / "real"), "--synth", str(tmp_path / "synth"), "--mask", str(tmp_path / "brain"),
            "--lesion_mask", str(tmp_path / "lesion"), "--out", str(tmp_path / "out"), "--no_progress"]
    assert run_cli(metric_cli, argv) == 0
    assert_original_numbers(csv_scores(tmp_path / "out" / "metrics_per_slice.csv"), metric_ref["expected"][kind])


# --------------------------------------------------------------------------- image I/O
def test_png16_round_trip_is_lossless(tmp_path: Path) -> None:
    """save_png16 → read_image loses at most one 16-bit step, and leaves no temporary file."""
    image = np.random.default_rng(4).random((20, 16))
    image[0, 0], image[0, 1] = 0.0, 1.0
    save_png16(image, tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.float64 and back.shape == (20, 16)
    assert np.abs(back - image).max() <= 1 / 65535
    assert back[0, 0] == 0.0 and back[0, 1] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    with pytest.raises(ValueError):
        save_png16(image + 0.5, tmp_path / "b.png")


def test_read_8bit_png_rgb_png_and_jpeg(tmp_path: Path) -> None:
    """8-bit PNG reads as level/255; RGB uses 0.299/0.587/0.114 luma; a gray RGB JPEG reads close to its gray."""
    levels = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    Image.fromarray(levels).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), levels / 255.0)

    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert np.abs(read_image(tmp_path / "rgb.png") - luma).max() <= 1 / 255

    smooth = np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)
    Image.fromarray(np.stack([smooth] * 3, axis=-1)).save(tmp_path / "test_samples_0.jpg", quality=95)
    jpeg = read_image(tmp_path / "test_samples_0.jpg")
    assert jpeg.shape == (32, 32)
    assert np.abs(jpeg - smooth / 255.0).mean() < 2 / 255


def test_read_npy_and_masks(tmp_path: Path) -> None:
    """Float .npy is returned as stored; integer or out-of-range .npy images are refused; masks threshold at 0.5."""
    image = np.random.default_rng(5).random((9, 9))
    np.save(tmp_path / "a.npy", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), image)
    np.save(tmp_path / "int.npy", (image * 255).astype(np.uint8))
    with pytest.raises(UserError, match="floats"):
        read_image(tmp_path / "int.npy")
    np.save(tmp_path / "big.npy", image * 3)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        read_image(tmp_path / "big.npy")
    np.save(tmp_path / "m.npy", (image > 0.5).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy"), image > 0.5)
    save_png8(image, tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), np.round(image * 255) > 127)


def test_unreadable_files_raise_user_error(tmp_path: Path) -> None:
    """A missing file or a text file named .png gives a one-line UserError naming the file."""
    (tmp_path / "bad.png").write_text("not an image")
    for name in ("bad.png", "missing.png"):
        with pytest.raises(UserError, match=name):
            read_image(tmp_path / name)


def test_natural_sort_orders_numbers() -> None:
    """Integers inside names sort numerically."""
    names = ["test_samples_10", "test_samples_2", "test_samples_1"]
    assert sorted(names, key=natural_key) == ["test_samples_1", "test_samples_2", "test_samples_10"]


# --------------------------------------------------------------------------- CLI
def write_results_folder(root: Path, count: int = 3, stacks: bool = True) -> tuple[np.ndarray, np.ndarray, Path]:
    """A folder in test.py's layout: PNG folders and (optionally) float .npy stacks; returns real, synth, folder."""
    folder = root / "exp" / "generated_samples"
    real, brain = zip(*(brain_phantom(seed=i) for i in range(count)))
    real, brain = np.stack(real), np.stack(brain)
    synth = np.clip(real + 0.05 * np.random.default_rng(9).standard_normal(real.shape), 0, 1) * brain
    lesion = np.zeros_like(brain)
    lesion[0, 9:13, 9:14] = True
    for i in range(count):
        for sub, array in (("real", real[i]), ("synth", synth[i]), ("mask/brain", brain[i]),
                           ("mask/lesion", lesion[i])):
            save_png16(array.astype(np.float64), folder / sub / f"slice_{i:05d}.png")
    if stacks:
        save_npy(real.astype(np.float32), folder / "real.npy")
        save_npy(synth.astype(np.float32), folder / "synth.npy")
        save_npy(brain.astype(np.uint8), folder / "brain_mask.npy")
        save_npy(lesion.astype(np.uint8), folder / "lesion_mask.npy")
    return real, synth, folder


def test_cli_on_results_folder_writes_outputs_and_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """metric_calc on test.py's folder prints every protocol's table row and writes CSV, JSON, PNG and .npy files."""
    real, synth, folder = write_results_folder(tmp_path)
    assert run_cli(metric_cli, [str(tmp_path / "exp"), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    for text in ("Whole brain (paper protocol", "Lesion only (paper protocol", "Plain ([0, 1]", "scikit-image",
                 ".npy stacks", "2 empty masks skipped"):
        assert text in printed
    out = folder / "metrics"
    with open(out / "metrics_per_slice.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["slice_00000", "slice_00001", "slice_00002"]
    expected = paper_metrics(real[1].astype(np.float32), synth[1].astype(np.float32), brain_phantom(seed=1)[1])
    assert float(rows[1]["brain_ssim"]) == pytest.approx(expected["ssim"], rel=1e-9)
    assert rows[1]["lesion_psnr"] == "nan"
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_slices"] == 3 and summary["metrics"]["lesion_psnr"]["n_nan"] == 2
    assert summary["metrics"]["brain_ssim"]["mean"] == pytest.approx(np.mean([float(r["brain_ssim"]) for r in rows]))
    assert Image.open(out / "metrics_distribution.png").size[0] > 100
    np.testing.assert_allclose(np.load(out / "ssim_values.npy"), [float(r["brain_ssim"]) for r in rows])
    assert np.isnan(np.load(out / "mae_values_lesion.npy")[1:]).all()


def test_png_folders_agree_with_npy_stacks(tmp_path: Path) -> None:
    """Without stacks the 16-bit PNGs are read instead and give nearly the same numbers."""
    _, _, with_stacks = write_results_folder(tmp_path / "a")
    _, _, png_only = write_results_folder(tmp_path / "b", stacks=False)
    exact, from_png = evaluate_folder(with_stacks, progress=False), evaluate_folder(png_only, progress=False)
    for a, b in zip(exact, from_png):
        assert b["brain_ssim"] == pytest.approx(a["brain_ssim"], abs=1e-3)
        assert b["plain_psnr"] == pytest.approx(a["plain_psnr"], abs=1e-2)


def test_cli_real_synth_folders_with_original_jpeg_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--real/--synth/--mask with the original's test_samples_{i}.jpg names; output goes to --out."""
    for i in range(2):
        real, brain = brain_phantom(seed=i)
        for sub, array in (("real", real), ("synth", np.clip(real * 0.9, 0, 1))):
            (tmp_path / sub).mkdir(exist_ok=True)
            Image.fromarray(np.round(array * 255).astype(np.uint8)).save(tmp_path / sub / f"test_samples_{i}.jpg")
        save_png8(brain.astype(np.float64), tmp_path / "mask" / f"test_samples_{i}.png")
    argv = ["--real", str(tmp_path / "real"), "--synth", str(tmp_path / "synth"), "--mask", str(tmp_path / "mask"),
            "--out", str(tmp_path / "out"), "--no_progress"]
    assert run_cli(metric_cli, argv) == 0
    assert "Whole brain (paper protocol" in capsys.readouterr().out
    assert (tmp_path / "out" / "psnr_values.npy").is_file()
    assert not (tmp_path / "out" / "psnr_values_lesion.npy").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "holds no images"),
    ("unpaired", "without a synthetic match"),
    ("shape", "shape"),
    ("no_args", "give a results folder"),
])
def test_cli_bad_inputs_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                                             message: str) -> None:
    """Missing or empty folders, unpaired names, shape mismatches and no arguments: exit 2, one line on stderr."""
    (tmp_path / "real").mkdir()
    (tmp_path / "synth").mkdir()
    if case in ("unpaired", "shape"):
        save_png16(np.zeros((8, 8)), tmp_path / "real" / "slice_1.png")
        other = "slice_2.png" if case == "unpaired" else "slice_1.png"
        save_png16(np.zeros((9, 8) if case == "shape" else (8, 8)), tmp_path / "synth" / other)
    argv = {"missing": [str(tmp_path / "nowhere")], "no_args": []}.get(
        case, ["--real", str(tmp_path / "real"), "--synth", str(tmp_path / "synth")])
    assert run_cli(metric_cli, argv + ["--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def _damage(path: Path, how: str) -> None:
    """Cut a file in half, empty it, or flip bytes inside its compressed data."""
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        middle = len(raw) // 2
        raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", ["truncated .png", "empty .png", "damaged .png", "truncated .jpg", "empty .jpg",
                                  "truncated .npy", "empty .npy", "truncated stack", "empty stack", "NaN stack"])
def test_corrupt_files_give_one_line_and_no_output(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   case: str) -> None:
    """Every corrupt input of metric_calc.py: exit 2, one `error:` line naming the file, no output folder."""
    how, kind = case.split()
    if kind == "stack":
        _, _, folder = write_results_folder(tmp_path)
        bad = folder / "synth.npy"
        if how == "NaN":
            stack = np.load(bad)
            stack[1, 3, 4] = np.nan
            np.save(bad, stack)
        else:
            _damage(bad, how)
        argv, out = [str(tmp_path / "exp")], folder / "metrics"
    else:
        real, mask = brain_phantom()
        for sub in ("real", "synth"):
            for i in range(2):
                name = tmp_path / sub / f"slice_{i}{kind}"
                name.parent.mkdir(exist_ok=True)
                if kind == ".npy":
                    np.save(name, real)
                else:
                    Image.fromarray(np.round(real * 255).astype(np.uint8)).save(name)
        bad = tmp_path / "synth" / f"slice_1{kind}"
        _damage(bad, how)
        out = tmp_path / "out"
        argv = ["--real", str(tmp_path / "real"), "--synth", str(tmp_path / "synth"), "--out", str(out)]
    assert run_cli(metric_cli, argv + ["--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "\n" not in err
    assert not out.exists()


def test_script_runs_as_printed_in_readme(tmp_path: Path) -> None:
    """`python metric_calc.py RESULTS_FOLDER` as a subprocess prints the table and exits 0."""
    write_results_folder(tmp_path, count=2)
    result = subprocess.run([sys.executable, "metric_calc.py", str(tmp_path / "exp")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Whole brain (paper protocol" in result.stdout
