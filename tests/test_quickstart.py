"""The quickstart runs end to end (as `make quickstart` does, with the short --quick budget)."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_every_step(tmp_path: Path) -> None:
    """Every step succeeds, every promised output exists, and the model is printed beside the fitted baseline."""
    out = tmp_path / "qs"
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "quickstart.py"), "--quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = out / "results" / "quickstart"
    samples, baseline = experiment / "generated_samples", experiment / "generated_samples_baseline_linear"
    for path in (experiment / "gen_diffusive_1_best.pth", experiment / "config.json", experiment / "curves.png",
                 samples / "synth.npy", samples / "uncertainty" / "disagreement.npy", baseline / "synth.npy",
                 samples / "metrics" / "metrics_summary.json", out / "quickstart.png"):
        assert path.exists(), path
    config = json.loads((experiment / "config.json").read_text())
    recipe = json.loads((ROOT / "configs" / "quickstart.json").read_text())
    assert all(config[k] == v for k, v in recipe.items() if k != "num_epoch")  # trained with the recipe
    assert json.loads((samples / "run.json").read_text())["checkpoints"][0].endswith("gen_diffusive_1_best.pth")
    summary = json.loads((samples / "metrics" / "metrics_summary.json").read_text())
    assert summary, "metric_calc wrote an empty summary"
    for method in ("MU-Diff synthesis of T1ce", "linear baseline (fitted on train)"):
        rows = re.findall(rf"^  {re.escape(method)}\s+(-?[\d.]+) ± [\d.]+\s+(-?[\d.]+) ± [\d.]+$", result.stdout,
                          re.MULTILINE)
        assert len(rows) >= 3, result.stdout[-2500:]  # brain (plain and paper protocol) and whole slice at least
        assert all(0 < float(psnr) < 100 and -1 <= float(ssim) <= 1 for psnr, ssim in rows)
    assert "neither method sees the test slices' truth" in result.stdout
    assert re.search(r"Enhancing rim drawn: -?\d+ % of the truth's enhancement", result.stdout), result.stdout[-800:]
    for step in ("make_sample_data.py", "pre_process.py", "train.py", "test.py", "metric_calc.py"):
        assert f"$ python {step}" in result.stdout or f"$ python demo/{step}" in result.stdout
    assert "--config configs/quickstart.json" in result.stdout and "--baseline linear" in result.stdout


def test_quickstart_rejects_too_few_cases(tmp_path: Path) -> None:
    """A bad option is one line, not a traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "quickstart.py"), "--cases", "2", "--out",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --cases 2") and "Traceback" not in result.stderr
