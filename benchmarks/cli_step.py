"""The step a user runs against the step the benchmark measures, in one run.

    python benchmarks/cli_step.py [--latents 8,32,64] [--threads 1] [--model FOLDER] [--tree PATH]

For each latent size (8 = 64 px, 32 = 256 px, 64 = 512 px) on one SD1.5-shaped model with random weights (built once
into --work, or --model), batch 1, four captioned images, the default template, no validation, measures, previews
or saves:
  cli     `python -m hypernet train` run twice, with a few and with more steps; its steady step is the difference in
          the process's CPU seconds divided by the difference in steps (so loading and setup cancel), and its peak
          memory while training comes from the longer run's summary.json (--profile), with the per-phase figures;
          "cli process" is the whole process's peak, loading included; "loop" is the CPU seconds of the training
          loop alone (its summary.json) over its steps, which no difference in loading can move.
  bench   the benchmark's step (benchmarks/train_step.py, "ours": forward, backward and the optimizer on the same
          UNet and hypernetwork, fixed inputs) in a process of its own, and one prompt through the model's text
          encoder: the allowance for a step that encodes its caption.
The goal: cli <= 1.05 x (bench + text encoding), and cli's peak memory at most 5% above bench's. CPU seconds, not
wall seconds, so a busy machine slows both alike; compare the ratios. `--tree PATH` runs the CLI of another checkout
(e.g. an older commit) for a before-and-after table. Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = {8: (4, 24), 32: (3, 10), 64: (2, 6)}  # (short run, long run) per latent side
FLAGS = ["--validation-every", "0", "--probe-draws", "0", "--preview-every", "0", "--save-every", "0",
         "--seed", "1", "--batch-size", "1", "--overwrite"]


def thread_env(threads: int, tree: Path) -> dict:
    """The child's environment: its torch thread count and the checkout it imports."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(tree))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def child(cmd: list, env: dict, cwd=None) -> tuple:
    """Run a command to its end: (its stdout, its CPU seconds, its peak resident memory in bytes), from the kernel's
    own accounting of that one process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err.read()[-3000:]}")
        return out.read(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def cli_run(model: Path, data: Path, logs: Path, latent: int, steps: int, threads: int, tree: Path) -> dict:
    """One CLI run: its CPU seconds and, where the checkout writes one, its summary.json timing."""
    name = f"l{latent}s{steps}"
    cmd = [sys.executable, "-m", "hypernet", "train", "--model", str(model), "--data", str(data),
           "--width", str(8 * latent), "--height", str(8 * latent), "--steps", str(steps), "--log-dir", str(logs),
           "--name", name, *FLAGS]
    cli = next(p for p in (tree / "hypernet" / "apps" / "cli.py", tree / "hypernet" / "cli.py") if p.exists())
    if "--profile" in cli.read_text():  # an older checkout may not have it
        cmd.append("--profile")
    _, seconds, peak = child(cmd, thread_env(threads, tree), cwd=tree)  # `-m` imports from the working folder
    summaries = sorted(logs.glob(f"*/{name}/summary*.json"), key=os.path.getmtime)
    timing = json.loads(summaries[-1].read_text())["timing"] if summaries else None
    return {"cpu_seconds": seconds, "peak_bytes": peak, "timing": timing}


def bench_step(model: Path, latent: int, repeats: int) -> dict:
    """In this process: the benchmark's step on the model's UNet (CPU seconds, the mean of `repeats` after one),
    its peak memory while stepping, and one prompt through the model's text encoder."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    import hypernet
    import train_step
    from hypernet.train.timing import peak_rss, reset_peak_rss
    text = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval()
    ids = torch.randint(0, 500, (1, 77))
    with torch.no_grad():
        text(ids)
        started = time.process_time()
        text(ids)
        text_seconds = time.process_time() - started
    del text
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(model / "unet")).eval()
    hn = hypernet.create(dims=[768, 320, 640, 1280], seed=0)
    inputs = train_step.make_inputs("sd15", "cpu", torch.float32, latent)
    step, _ = train_step.prepare(unet, hn, inputs, "ours", "cpu", torch.float32)
    reset_peak_rss()
    step()
    started = time.process_time()
    for _ in range(repeats):
        step()
    # the mean, as the CLI's figure is: a difference of whole runs
    return {"step_seconds": (time.process_time() - started) / repeats, "text_seconds": text_seconds,
            "peak_bytes": peak_rss()}


def ensure_model(args) -> tuple:
    """(model folder, image folder): --model, else the SD1.5-shaped random model built once into --work."""
    work = Path(args.work)
    model = Path(args.model) if args.model else work / "sd15"
    if not (model / "model_index.json").exists():
        print(f"building a random SD1.5-shaped model in {model} (about 4 GB) ...", flush=True)
        import sd15_model
        sd15_model.build_folder(model)
    data = work / "images"
    if not data.exists():
        import sd15_model
        sd15_model.write_images(data, count=4, size=512)
    return model, data


def measure(args, latent: int, model: Path, data: Path) -> dict:
    """The CLI's two runs and the benchmark's step for one latent size."""
    short, long = STEPS.get(latent, (2, 5))
    tree = Path(args.tree).resolve() if args.tree else ROOT
    logs = Path(args.work) / ("logs" if tree == ROOT else f"logs-{tree.name}")
    a = cli_run(model, data, logs, latent, short, args.threads, tree)
    b = cli_run(model, data, logs, latent, long, args.threads, tree)
    bench_cmd = [sys.executable, __file__, "--bench-step", str(latent), "--model", str(model),
                 "--repeats", str(args.repeats)]
    out, _, _ = child(bench_cmd, thread_env(args.threads, ROOT))
    bench = json.loads(out.strip().splitlines()[-1])
    loop = b["timing"] and b["timing"].get("cpu_seconds")
    return {"latent": latent, "cli_step": (b["cpu_seconds"] - a["cpu_seconds"]) / (long - short),
            "cli_loop_step": loop / long if loop else None, "cli_timing": b["timing"],
            "cli_process_peak": b["peak_bytes"], **bench}


def report(rows: list) -> None:
    """The table: seconds per step, the goal's ratio, peak memory, and the CLI's phases."""
    print(f"\n{'latent':>6} {'px':>4} {'cli s':>7} {'loop s':>7} {'bench s':>8} {'text s':>7} {'cli/(bench+text)':>17} "
          f"{'cli GiB':>8} {'bench GiB':>9} {'mem ratio':>9} {'cli process GiB':>15}")
    for r in rows:
        timing = r["cli_timing"] or {}
        cli_peak = timing.get("peak_bytes")
        mem = f"{cli_peak / r['peak_bytes']:>9.3f}" if cli_peak and r["peak_bytes"] else f"{'-':>9}"
        cli_gib = f"{cli_peak / 2 ** 30:>8.2f}" if cli_peak else f"{'-':>8}"
        loop = f"{r['cli_loop_step']:>7.3f}" if r["cli_loop_step"] else f"{'-':>7}"
        print(f"{r['latent']:>6} {8 * r['latent']:>4} {r['cli_step']:>7.3f} {loop} {r['step_seconds']:>8.3f} "
              f"{r['text_seconds']:>7.3f} {r['cli_step'] / (r['step_seconds'] + r['text_seconds']):>17.3f} "
              f"{cli_gib} {r['peak_bytes'] / 2 ** 30:>9.2f} {mem} {r['cli_process_peak'] / 2 ** 30:>15.2f}")
    for r in rows:
        timing = r["cli_timing"]
        if timing:
            phases = ", ".join(f"{k} {v:.0f}" for k, v in timing["per_step_ms"].items())
            print(f"latent {r['latent']}: CLI ms per step (wall, longer run): {phases}; median step "
                  f"{timing['median_step_ms']:.0f} ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", default="8,32,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="benchmark steps timed after a first one (their mean)")
    parser.add_argument("--work", default="benchmark-work", help="folder for the model, images and run logs")
    parser.add_argument("--model", help="an SD1.5-shaped diffusers folder to use instead of building one")
    parser.add_argument("--tree", help="run the CLI of this checkout instead of this one")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--bench-step", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench_step:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(bench_step(Path(args.model), args.bench_step, args.repeats)))
        return
    import torch
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; CPU seconds" + (f"; CLI from {args.tree}" if args.tree else ""))
    model, data = ensure_model(args)
    rows = []
    for latent in [int(v) for v in args.latents.split(",")]:
        rows.append(measure(args, latent, model, data))
        loop = rows[-1]["cli_loop_step"]
        print(f"latent {latent}: cli {rows[-1]['cli_step']:.3f} s/step"
              + (f" (its loop alone {loop:.3f})" if loop else "")
              + f", bench {rows[-1]['step_seconds']:.3f} s, text {rows[-1]['text_seconds']:.3f} s", flush=True)
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
