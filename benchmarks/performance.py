"""Where users wait, in one run: loading a file, a UNet forward with a hypernetwork attached, one training step.

    python benchmarks/performance.py [--repeats 3] [--forward-latents 32,64] [--train-latents 8,32,64] [--threads N]

1. load      hypernet.load of the default 88 MB webui-layout file (768/320/640/1280, [1, 2, 1]) as .pt and
             .safetensors against torch.load(weights_only=True) of the same .pt (benchmarks/load_time.py)
2. forward   the SD1.5 UNet (random weights, batch 1, 77 x 768 context, no_grad) with a 768-only file and an
             all-width file, each with the shared cross-attention result (cache) and without it (the webui's way:
             every layer recomputes it), against the bare UNet, with the ratio that FLOP counts predict
3. train     one full SD1.5 training step (forward, backward, AdamW step on the hypernetwork) against the floor
             (the frozen UNet's forward + backward alone, see benchmarks/train_step.py) and the webui's way, with
             the ratio FLOP counts predict beside each and a breakdown of ours: the optimizer step, the saving of
             the shared result, and the rest (hooks, the hypernetwork's own matmuls and weight gradients)

All variants of a section run interleaved in one process, so a busy machine slows them alike, and the fastest of
the repeats is kept: compare the ratios, not the seconds. FLOP counts come from torch.utils.flop_counter (matmuls and convolutions; the optimizer step and
elementwise work count nothing). Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import hypernet  # noqa: E402

import attach_overhead  # noqa: E402
import load_time  # noqa: E402
import train_step  # noqa: E402
from unet_configs import SD15  # noqa: E402


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def interleaved(cases: dict, repeats: int) -> dict:
    """Fastest seconds per case; each case is (setup, run, undo), only run is timed, cases alternate.

    The fastest run, not the median: on a shared machine a run is only ever slowed by others, never sped up."""
    times = {name: [] for name in cases}
    for setup, run, undo in cases.values():  # warm-up
        setup()
        run()
        undo()
    for _ in range(repeats):
        for name, (setup, run, undo) in cases.items():
            setup()
            times[name].append(load_time._timed(run, clock))
            undo()
    return {name: min(values) for name, values in times.items()}


def counted(setup, run, undo) -> int:
    setup()
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        undo()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- 1. load
def load_section(repeats: int) -> None:
    print("\n== 1. load: hypernet.load against torch.load(weights_only=True) of the same .pt")
    load_time.report(*load_time.measure(SD15_DIMS, max(repeats, 9), clock))


SD15_DIMS = [768, 320, 640, 1280]


# ---------------------------------------------------------------------------------------------- 2. forward
def forward_section(latents, repeats: int) -> None:
    print("\n== 2. forward: SD1.5 UNet, batch 1, no_grad; ratio to the bare UNet (FLOP theory beside it)")
    unet = attach_overhead.build(SD15)
    files = {"768-only": hypernet.create(dims=[768], seed=0), "all-width": hypernet.create(dims=SD15_DIMS, seed=0)}
    print(f"{'latent':>6} {'file':<10} {'cache':<6} {'ms':>9} {'ratio':>7} {'theory':>7}")
    for latent in latents:
        kwargs = attach_overhead.inputs(latent)
        holder = {}

        def hooked(hn, cache, holder=holder, kwargs=kwargs):  # bound now: each latent size has its own
            def setup():
                holder["h"] = hypernet.attach(unet, hn, warn=False, cache=cache)
            return setup, lambda: attach_overhead.forward(unet, kwargs), lambda: holder.pop("h").remove()

        nothing = (lambda: None, lambda kwargs=kwargs: attach_overhead.forward(unet, kwargs), lambda: None)
        cases = {("base", "-"): nothing}
        for name, hn in files.items():
            for cache in (True, False):
                cases[(name, "on" if cache else "off")] = hooked(hn, cache)
        flops = {key: counted(*case) for key, case in cases.items()}
        times = interleaved(cases, repeats)
        base_t, base_f = times[("base", "-")], flops[("base", "-")]
        for key in cases:
            print(f"{latent:>6} {key[0]:<10} {key[1]:<6} {times[key] * 1e3:>9.1f} {times[key] / base_t:>7.3f} "
                  f"{flops[key] / base_f:>7.3f}")


# ---------------------------------------------------------------------------------------------- 3. train
TRAIN_VARIANTS = ("floor", "ours", "ours-noopt", "ours-nocache", "webui")


def train_section(latents, repeats: int) -> None:
    print("\n== 3. train: one SD1.5 step (forward + backward + AdamW on the hypernetwork), fp32; ratio to the floor")
    print(f"{'latent':>6} {'variant':<13} {'s/step':>8} {'ratio':>7} {'theory':>7}")
    for latent in latents:
        unet, hn, inputs = train_step.build("sd15", "cpu", torch.float32, latent)
        holder = {}

        def variant(name, unet=unet, hn=hn, inputs=inputs, holder=holder):  # bound now, per latent size
            def setup():
                holder["step"], holder["undo"] = train_step.prepare(unet, hn, inputs, name, "cpu", torch.float32)
            return setup, lambda: holder["step"](), lambda: holder.pop("undo")()

        cases = {name: variant(name) for name in TRAIN_VARIANTS}
        flops = {name: counted(*cases[name]) for name in TRAIN_VARIANTS}
        times = interleaved(cases, repeats)
        floor_t, floor_f = times["floor"], flops["floor"]
        for name in TRAIN_VARIANTS:
            print(f"{latent:>6} {name:<13} {times[name]:>8.3f} {times[name] / floor_t:>7.3f} "
                  f"{flops[name] / floor_f:>7.3f}")
        optimizer = times["ours"] - times["ours-noopt"]
        shared = times["ours-nocache"] - times["ours"]
        rest = times["ours-noopt"] - floor_t
        theory_rest = (flops["ours-noopt"] - floor_f) / floor_f * floor_t
        print(f"{latent:>6} ours over the floor: {(times['ours'] - floor_t) * 1e3:.0f} ms = AdamW step "
              f"{optimizer * 1e3:.0f} ms + hooks and hypernetwork work {rest * 1e3:.0f} ms (its FLOPs alone "
              f"{theory_rest * 1e3:.0f} ms at the floor's rate); the shared result saves {shared * 1e3:.0f} ms")
        del unet, hn, inputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-latents", default="32,64")
    parser.add_argument("--train-latents", default="8,32,64")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: load, forward, train")
    parser.add_argument("--clock", choices=CLOCK, default="cpu",
                        help="cpu: the process's CPU seconds (default; robust on a shared machine, where a "
                             "descheduled process still waits on the wall clock); wall: elapsed seconds")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start; {args.clock} clock, fastest of {args.repeats}")
    if "load" not in skip:
        load_section(args.repeats)
    if "forward" not in skip:
        forward_section([int(v) for v in args.forward_latents.split(",")], args.repeats)
    if "train" not in skip:
        train_section([int(v) for v in args.train_latents.split(",")], args.repeats)


if __name__ == "__main__":
    main()
