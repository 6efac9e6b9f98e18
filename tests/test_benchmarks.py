"""benchmarks/gpu.py runs end to end on a CPU (--tiny) and reports what the README's GPU table is filled from."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
VARIANTS = ("floor", "ours", "webui")


def test_gpu_benchmark_runs_on_cpu_and_writes_its_figures(tmp_path):
    figures_file = tmp_path / "figures.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny",
                          "--json", str(figures_file)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(figures_file.read_text())
    assert json.loads(out.stdout.strip().splitlines()[-1]) == report  # the last line printed is the same JSON

    results = report["results"]
    assert set(results) == set(PRECISIONS)
    for batch in ("1", "2"):
        for variant in VARIANTS:  # fp32 runs everywhere: every variant has a time, the webui's way included
            assert "ms_per_step" in results["fp32"][batch][variant], results["fp32"][batch][variant]
    times = [figures["ms_per_step"] for precision in results.values() if "skipped" not in precision
             for batch in precision.values() for name, figures in batch.items()
             if name in VARIANTS and "ms_per_step" in figures]
    assert len(times) >= 6 and all(math.isfinite(t) and t > 0 for t in times), times
    for name in PRECISIONS:  # each precision has figures, or says it was skipped on this CPU
        named = [line for line in out.stdout.splitlines() if line.startswith(name + " ")]
        assert any("skipped on cpu" in line for line in named) or any(" ours " in line for line in named), name

    cli = report["cli"]
    assert cli["returncode"] == 0 and cli["run_folder"], cli
    assert f"CLI run: exit 0, run folder {cli['run_folder']}" in out.stdout
    assert cli["profile_flag"] and cli["time_line"].startswith("time: 3 steps in "), cli
    phases = cli["timing"]["phases"]
    assert phases["forward"] > 0 and phases["backward"] > 0 and "rest" in phases
    assert math.isclose(sum(phases.values()), cli["timing"]["seconds"], rel_tol=1e-6)
    assert 0 <= cli["non_unet_share"] < 1
