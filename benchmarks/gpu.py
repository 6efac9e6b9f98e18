"""One short GPU benchmark: a hypernetwork training step on the SD1.5 UNet in four precisions, and the CLI's phases.

    python benchmarks/gpu.py [--batches 1,4] [--precisions fp32,fp16,bf16,fp8] [--json figures.json]
    python benchmarks/gpu.py --device cpu --tiny          # the whole script on a CPU in seconds (tests run this)

1. step     the SD1.5-shaped UNet (random weights, benchmarks/unet_configs.SD15) at 512 px (latent 64), each batch,
            each precision: fp32, fp16 (autocast + GradScaler loss scaling), bf16, fp8 (Linear / Conv2d weights
            stored as float8_e4m3fn, cast to float16 per call, as the webui's FP8 mode and Forge's --unet-in-fp8;
            fp8-bf16 casts to bfloat16). Three variants (benchmarks/train_step.py):
              ours   frozen UNet + hypernetwork hooks, float32 master weights, the trainer's AdamW step
              webui  the webui's way: UNet parameters trainable, naive attention, no shared cross-attention result
              floor  the frozen UNet's forward + backward alone
            Time per step (CUDA synchronized, after warm-up steps, median of the repeats; the variants alternate
            in one process) and peak CUDA memory per variant (max_memory_allocated after reset_peak_memory_stats;
            not measured on a CPU), with the ratios webui/ours and ours/floor.
2. CLI      the real `python -m hypernet train --profile` on a random SD1.5-shaped model folder
            (benchmarks/sd15_model.py, saved in float16) and 512 px noise images, fp16 on CUDA, and its time per
            step of each phase from the run folder's summary.json; "CLI profile not available" where the CLI has
            no --profile yet. With --tiny: the bundled hypernet/assets/tiny-sd, 64 px images, 3 steps.

The goals are printed as checks (nothing is asserted): at fp16, ours at least 3x faster than the webui's way and
at most 6 GiB peak; the CLI's phases other than the UNet's forward and backward under 10% of the step. The last
line printed is every figure as JSON (--json FILE writes the same).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import sd15_model  # noqa: E402
import train_step  # noqa: E402

VARIANTS = ("floor", "ours", "webui")
GOAL_SPEEDUP, GOAL_PEAK_GIB, GOAL_REST = 3.0, 6.0, 0.10
UNET_PHASES = ("forward", "backward")


# ---------------------------------------------------------------------------------------------- device helpers
def sync(device: str) -> None:
    """Wait for the device's queued work."""
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Start a new peak-memory measure (CUDA only)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def read_peak(device: str):
    """Peak allocated bytes since reset_peak, or None where not measured (CPU)."""
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


def free_memory(device: str) -> None:
    """Release what the last precision left, so the next one's peak is its own."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def unavailable(name: str, device: str):
    """Why a precision cannot train on this device (None when it can), from a small probe step."""
    dtype, fp8 = train_step.precision(name)
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16"
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4))
        model.to(device, dtype)
        if fp8:
            train_step.store_fp8(model, dtype)
        x = torch.randn(1, 4, 8, 8, device=device, dtype=dtype, requires_grad=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x).float().square().mean()
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
        scaler.scale(loss).backward()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip this precision here
        return error_text(exc)


# ---------------------------------------------------------------------------------------------- 1. step
def timed_block(step, steps: int, device: str) -> float:
    """Seconds per step over `steps` steps, synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def run_variant(case: dict, variant: str, steps: int, device: str):
    """(seconds per step, peak bytes) of one block of steps of one variant; the UNet is restored after."""
    step, undo = train_step.prepare(case["unet"], case["hn"], case["inputs"], variant, device, case["dtype"],
                                    scaler=case["scalers"].get(variant))
    try:
        reset_peak(device)
        seconds = timed_block(step, steps, device)
        return seconds, read_peak(device)
    finally:
        undo()


def measure_batch(case: dict, steps: int, repeats: int, warmup: int, device: str) -> dict:
    """{variant: figures} for one UNet and batch: warm-up, then the variants alternate for each repeat."""
    times = {v: [] for v in VARIANTS}
    peaks = {v: [] for v in VARIANTS}
    errors = {}
    passes = ([(warmup, False)] if warmup else []) + [(steps, True)] * repeats
    for count, kept in passes:
        for variant in VARIANTS:
            if variant in errors:
                continue
            try:
                seconds, peak = run_variant(case, variant, count, device)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report it, go on with the rest
                errors[variant] = error_text(exc)
                free_memory(device)
                continue
            if kept:
                times[variant].append(seconds)
                peaks[variant].append(peak)
    return {v: ({"error": errors[v]} if v in errors else figures(times[v], peaks[v])) for v in VARIANTS}


def error_text(exc: Exception) -> str:
    """An exception as one short line."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300]


def figures(times: list, peaks: list) -> dict:
    """One variant's figures: median ms per step, each repeat's, and the peak memory (None on a CPU)."""
    peak = max(peaks) if peaks and peaks[0] is not None else None
    return {"ms_per_step": statistics.median(times) * 1e3, "ms_repeats": [t * 1e3 for t in times],
            "peak_bytes": peak}


def ratios(batch: dict) -> dict:
    """webui/ours and ours/floor time, and webui/ours peak memory, where both figures exist."""
    def ratio(a, b, key):
        x, y = batch[a].get(key), batch[b].get(key)
        return x / y if x and y else None
    return {"webui/ours": ratio("webui", "ours", "ms_per_step"), "ours/floor": ratio("ours", "floor", "ms_per_step"),
            "peak webui/ours": ratio("webui", "ours", "peak_bytes")}


def run_precision(name: str, args) -> dict:
    """{batch: {variant: figures, "ratios": ...}} for one precision, on a UNet built for it alone."""
    dtype, fp8 = train_step.precision(name)
    unet, hn, _ = train_step.build(args.config, args.device, dtype, args.latent, fp8=fp8)
    out = {}
    try:
        for batch in args.batch_list:
            inputs = train_step.make_inputs(args.config, args.device, dtype, args.latent, batch)
            scalers = ({v: torch.amp.GradScaler(args.device) for v in VARIANTS} if dtype == torch.float16 else {})
            case = {"unet": unet, "hn": hn, "inputs": inputs, "dtype": dtype, "scalers": scalers}
            result = measure_batch(case, args.steps, args.repeats, args.warmup, args.device)
            result["ratios"] = ratios(result)
            out[str(batch)] = result
            print_batch(name, batch, result)
            del inputs, case
    finally:
        del unet, hn
        free_memory(args.device)
    return out


def mib(value) -> str:
    """Bytes as MiB for the table, '-' where not measured."""
    return f"{value / 2 ** 20:.0f}" if value is not None else "-"


def print_batch(name: str, batch: int, result: dict) -> None:
    """The table rows of one precision and batch, then its ratios."""
    for variant in VARIANTS:
        r = result[variant]
        if "error" in r:
            print(f"{name:<9} {batch:>5} {variant:<6} failed: {r['error']}")
        else:
            print(f"{name:<9} {batch:>5} {variant:<6} {r['ms_per_step']:>10.1f} {mib(r['peak_bytes']):>9}")
    q = result["ratios"]

    def fmt(v):
        return f"{v:.2f}" if v is not None else "-"
    print(f"{name:<9} {batch:>5} ratios: webui/ours time {fmt(q['webui/ours'])}, ours/floor time "
          f"{fmt(q['ours/floor'])}, webui/ours peak memory {fmt(q['peak webui/ours'])}", flush=True)


def step_section(args) -> dict:
    """Section 1 for every precision asked: figures, or {"skipped": why}."""
    size = args.latent * 8
    print(f"\n== 1. step: {args.config} UNet (random weights), {size}x{size} px (latent {args.latent}), batches "
          f"{args.batches}; median of {args.repeats} x {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'precision':<9} {'batch':>5} {'variant':<6} {'ms/step':>10} {'peak MiB':>9}")
    results = {}
    for name in args.precision_list:
        why = unavailable(name, args.device)
        if why:
            print(f"{name:<9} skipped on {args.device}: {why}")
            results[name] = {"skipped": why}
            continue
        try:
            results[name] = run_precision(name, args)
        except Exception as exc:  # noqa: BLE001 - a precision that cannot even build here is skipped
            why = error_text(exc)
            print(f"{name:<9} skipped on {args.device}: {why}")
            results[name] = {"skipped": why}
    return results


# ---------------------------------------------------------------------------------------------- 2. CLI
def cli_command(args, model: str, data: str, logs: str, profile: bool) -> list:
    """The `python -m hypernet train` command line of the profile run."""
    size = 64 if args.tiny else args.latent * 8
    cmd = [sys.executable, "-m", "hypernet", "train", "--model", model, "--data", data, "--steps",
           str(args.cli_steps), "--device", args.device, "--width", str(size), "--height", str(size),
           "--batch-size", str(args.cli_batch), "--seed", "0", "--validation-every", "0", "--probe-draws", "0",
           "--preview-every", "0", "--save-every", "0", "--log-dir", logs]
    if args.device == "cuda":
        cmd += ["--dtype", "fp16", "--mixed-precision", "fp16"]
    return cmd + (["--profile"] if profile else [])


def run_cli(cmd: list, timeout: int) -> subprocess.CompletedProcess:
    """Run the CLI with the repository's hypernet first on the path."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def read_timing(run_folder):
    """The "timing" entry of the run folder's summary.json, or None."""
    path = os.path.join(run_folder, "summary.json") if run_folder else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("timing")


def non_unet_share(timing: dict):
    """Share of the step spent outside the UNet's forward and backward, from the profile's phases."""
    phases = timing.get("phases") or {}
    total = sum(phases.values())
    if total <= 0:
        return None
    return 1 - sum(phases.get(p, 0.0) for p in UNET_PHASES) / total


def cli_section(args, work: str) -> dict:
    """Section 2: the CLI's profiled run, its time line and per-phase figures (None where not available)."""
    print(f"\n== 2. CLI: python -m hypernet train --profile, {args.cli_steps} steps, batch {args.cli_batch}")
    dtype = torch.float16 if args.device == "cuda" else None
    model = args.cli_model or sd15_model.build_folder(os.path.join(work, "model"), tiny=args.tiny, dtype=dtype)
    data = sd15_model.write_images(os.path.join(work, "images"), count=4, size=64 if args.tiny else args.latent * 8)
    logs = os.path.join(work, "logs")
    cmd = cli_command(args, model, data, logs, profile=True)
    out = run_cli(cmd, args.cli_timeout)
    profile = not (out.returncode != 0 and "--profile" in out.stderr and "unrecognized" in out.stderr)
    if not profile:
        cmd = cli_command(args, model, data, logs, profile=False)
        out = run_cli(cmd, args.cli_timeout)
    return report_cli(cmd, out, profile)


def report_cli(cmd: list, out: subprocess.CompletedProcess, profile: bool) -> dict:
    """Print the CLI run's outcome and phases; the figures for the JSON."""
    found = re.search(r"^run folder: (.+?) \(", out.stdout, re.M)
    run_folder = found.group(1) if found else None
    time_lines = [line for line in out.stdout.splitlines() if line.startswith("time:")]
    result = {"command": cmd[1:], "returncode": out.returncode, "run_folder": run_folder, "profile_flag": profile,
              "time_line": time_lines[-1] if time_lines else None, "timing": None, "non_unet_share": None}
    if out.returncode != 0:
        print(f"CLI run failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
        return result
    print(f"CLI run: exit 0, run folder {run_folder}")
    if result["time_line"]:
        print(result["time_line"])
    timing = read_timing(run_folder)
    if timing is None:
        print("CLI profile not available" + ("" if profile else " (this CLI has no --profile)"))
        return result
    result["timing"], result["non_unet_share"] = timing, non_unet_share(timing)
    print_phases(timing, result["non_unet_share"])
    return result


def print_phases(timing: dict, share) -> None:
    """The per-phase line: ms per step of each phase, and the share outside the UNet."""
    steps = max(timing.get("steps") or 1, 1)
    per_step = timing.get("per_step_ms") or {k: v * 1e3 / steps for k, v in (timing.get("phases") or {}).items()}
    parts = ", ".join(f"{k} {v:.1f}" for k, v in per_step.items())
    share_text = f"; outside the UNet's forward + backward: {share:.1%}" if share is not None else ""
    print(f"phases (ms per step over {steps} steps): {parts}{share_text}")


# ---------------------------------------------------------------------------------------------- checks
def checks(results: dict, cli: dict) -> list:
    """The goals as checks: [{name, value, goal, ok}], ok None where there is no figure."""
    out = []
    fp16 = results.get("fp16", {})
    batches = {} if "skipped" in fp16 else fp16
    for batch, r in batches.items():
        speedup = r["ratios"]["webui/ours"]
        out.append({"name": f"fp16 batch {batch}: webui/ours time", "value": speedup, "goal": f">= {GOAL_SPEEDUP}",
                    "ok": None if speedup is None else speedup >= GOAL_SPEEDUP})
        peak = r["ours"].get("peak_bytes")
        gib = peak / 2 ** 30 if peak is not None else None
        out.append({"name": f"fp16 batch {batch}: ours peak GiB", "value": gib, "goal": f"<= {GOAL_PEAK_GIB}",
                    "ok": None if gib is None else gib <= GOAL_PEAK_GIB})
    share = cli.get("non_unet_share") if cli else None
    out.append({"name": "CLI: share of the step outside the UNet", "value": share, "goal": f"< {GOAL_REST}",
                "ok": None if share is None else share < GOAL_REST})
    return out


def print_checks(items: list) -> None:
    """One line per check: the figure, the goal, ok / MISSED / no figure."""
    print("\n== checks (goals, not asserted)")
    for c in items:
        state = {True: "ok", False: "MISSED", None: "no figure"}[c["ok"]]
        value = f"{c['value']:.3f}" if c["value"] is not None else "-"
        print(f"check {c['name']}: {value} (goal {c['goal']}): {state}")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    """Flags; --tiny swaps in the tiny UNet, latent 8, batches 1,2, few steps, tiny-sd for the CLI."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny UNet and model: a check of the script, in seconds")
    p.add_argument("--batches", default=None, help="comma list (default 1,4; 1,2 with --tiny)")
    p.add_argument("--latent", type=int, default=None, help="latent side (default 64 = 512 px; 8 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 5; 1 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="repeats, median kept (default 3; 1 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default 2; 0 with --tiny)")
    p.add_argument("--precisions", default="fp32,fp16,bf16,fp8",
                   help=f"comma list of {', '.join(train_step.PRECISIONS)}")
    p.add_argument("--skip-cli", action="store_true", help="skip the CLI profile run")
    p.add_argument("--cli-steps", type=int, default=None, help="CLI training steps (default 50; 3 with --tiny)")
    p.add_argument("--cli-batch", type=int, default=1, help="CLI batch size")
    p.add_argument("--cli-model", default=None, help="an existing model folder for the CLI instead of building one")
    p.add_argument("--cli-timeout", type=int, default=1200)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write every figure to this file")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.config = "tiny" if tiny else "sd15"
    args.batches = args.batches or ("1,2" if tiny else "1,4")
    args.latent = args.latent or (8 if tiny else 64)
    # --tiny checks the script, not the figures: one step per variant keeps it fast where a CPU is slow at float16
    args.steps = args.steps or (1 if tiny else 5)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if tiny else 2)
    args.cli_steps = args.cli_steps or (3 if tiny else 50)
    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.precision_list = [n for n in args.precisions.split(",") if n]
    unknown = set(args.precision_list) - set(train_step.PRECISIONS)
    if unknown:
        p.error(f"--precisions: unknown {', '.join(sorted(unknown))}")
    return args


def header(args) -> dict:
    """Print and return the machine: GPU name (or CPU), torch and CUDA versions."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu (and --tiny for a quick check)")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    print(f"{gpu or 'CPU'}; torch {torch.__version__}, CUDA {torch.version.cuda}; {torch.get_num_threads()} CPU "
          f"threads")
    return {"device": args.device, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
            "config": args.config, "latent": args.latent, "batches": args.batch_list, "steps": args.steps,
            "repeats": args.repeats, "warmup": args.warmup}


def main(argv=None) -> int:
    """Both sections, the checks and the JSON; exit 1 when the CLI run failed."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()  # not its advice on casting the random UNets with .to()
    report = header(args)
    report["results"] = step_section(args)
    report["cli"] = None
    if not args.skip_cli:
        work = tempfile.mkdtemp(prefix="hypernet-gpu-bench-")
        try:
            report["cli"] = cli_section(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report["checks"] = checks(report["results"], report["cli"])
    print_checks(report["checks"])
    text = json.dumps(report, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 1 if report["cli"] and report["cli"]["returncode"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
