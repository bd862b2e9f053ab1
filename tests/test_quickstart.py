"""The quickstart runs end to end (as `make quickstart` does, with the short --quick budget)."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_every_step(tmp_path: Path) -> None:
    """All five steps succeed, every promised output exists, and both PSNR figures are printed."""
    out = tmp_path / "qs"
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "quickstart.py"), "--quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = out / "results" / "quickstart"
    samples = experiment / "generated_samples"
    for path in (experiment / "gen_diffusive_1.pth", experiment / "config.json", experiment / "curves.png",
                 samples / "synth.npy", samples / "uncertainty" / "disagreement.npy",
                 samples / "metrics" / "metrics_summary.json", out / "quickstart.png"):
        assert path.exists(), path
    summary = json.loads((samples / "metrics" / "metrics_summary.json").read_text())
    assert summary, "metric_calc wrote an empty summary"
    synth = re.search(r"MU-Diff synthesis of T1ce\s+(-?[\d.]+) dB", result.stdout)
    baseline = re.search(r"T1 input rescaled \(baseline\)\s+(-?[\d.]+) dB", result.stdout)
    assert synth and baseline, result.stdout[-2000:]
    assert 0 < float(synth.group(1)) < 100 and 0 < float(baseline.group(1)) < 100
    assert "borrows the truth's own intensity range" in result.stdout
    for step in ("make_sample_data.py", "pre_process.py", "train.py", "test.py", "metric_calc.py"):
        assert f"$ python {step}" in result.stdout or f"$ python demo/{step}" in result.stdout


def test_quickstart_rejects_too_few_cases(tmp_path: Path) -> None:
    """A bad option is one line, not a traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "quickstart.py"), "--cases", "2", "--out",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --cases 2") and "Traceback" not in result.stderr
