"""Time of one hypernetwork training step against the floor, and against the webui's way of training.

Variants, each run in its own process so peak memory is its own (same script, same machine, same inputs):
  floor   the frozen UNet, forward + backward from the same attention inputs, no hypernetwork: every to_k / to_v
          input is scaled by one trainable scalar, so backward covers exactly what ours must cover, minus the MLPs
  ours    frozen UNet + hypernetwork hooks (cross-attention result shared across layers), backward into the
          hypernetwork only, SDP attention, then an AdamW step
  webui   the webui's way: UNet parameters left trainable (gradients computed for all of them), naive attention
          (the webui's Train tab undoes attention optimisations), the hypernetwork recomputed in every layer, same
          hypernetwork and AdamW step

Precisions (--dtype): fp32; fp16 (autocast, with a GradScaler's loss scaling as the trainer uses); bf16; fp8 and
fp8-bf16 (Linear / Conv2d weights stored as float8_e4m3fn and cast to float16 / bfloat16 per call, as the webui's
FP8 mode and Forge's --unet-in-fp8 do). The AdamW step is the trainer's own (hypernet.train.optimizers.build_optimizer).

Usage: python benchmarks/train_step.py [--quick] [--device cuda] [--dtype fp16] [--latent 64] [--repeats 3]
Prints seconds per step, peak memory, and the ratios ours/floor and webui/ours. Nothing here is asserted.
benchmarks/gpu.py runs the same variants for every precision and batch in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_configs import SD15, SDXL, TINY  # noqa: E402

CONFIGS = {"tiny": TINY, "sd15": SD15, "sdxl": SDXL}
# precision name -> (compute dtype, Linear/Conv2d weights stored in float8_e4m3fn)
PRECISIONS = {"fp32": ("float32", False), "fp16": ("float16", False), "bf16": ("bfloat16", False),
              "fp8": ("float16", True), "fp8-bf16": ("bfloat16", True)}


def precision(name: str):
    """(compute dtype, fp8 storage) for a precision name."""
    import torch
    dtype_name, fp8 = PRECISIONS[name]
    return getattr(torch, dtype_name), fp8


def store_fp8(unet, compute_dtype) -> None:
    """Keep every Linear / Conv2d weight and bias in float8_e4m3fn, cast to compute_dtype on each call."""
    import torch
    import torch.nn.functional as F

    def cast(t):
        return None if t is None else t.to(compute_dtype)

    def linear(self, x):
        return F.linear(x.to(compute_dtype), cast(self.weight), cast(self.bias))

    def conv(self, x):
        return self._conv_forward(x.to(compute_dtype), cast(self.weight), cast(self.bias))

    for module in unet.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.to(torch.float8_e4m3fn)
            forward = linear if isinstance(module, torch.nn.Linear) else conv
            module.forward = forward.__get__(module)


class _ScalarHooks:
    """Multiply every to_k / to_v input by one trainable scalar: the hook graph without the MLPs."""

    def __init__(self, unet, scale):
        self.handles = []
        for site in __import__("hypernet").find_attention(unet):
            for proj in (site.module.to_k, site.module.to_v):
                self.handles.append(proj.register_forward_pre_hook(
                    lambda mod, args: (args[0] * scale.to(args[0].dtype),) + tuple(args[1:])))

    def remove(self):
        for h in self.handles:
            h.remove()


def build(config_name: str, device: str, dtype, latent: int, batch: int = 1, fp8: bool = False):
    """(unet, hypernetwork, step inputs) for one config, seeded: the same weights and inputs in every process.

    The UNet is in dtype (with fp8, its Linear / Conv2d weights in float8 computing in dtype); the hypernetwork
    stays float32, as the trainer keeps its master weights."""
    import torch
    from diffusers import UNet2DConditionModel

    import hypernet
    torch.manual_seed(0)
    config = CONFIGS[config_name]
    unet = UNet2DConditionModel(**config).to(device, dtype)
    if fp8:
        store_fp8(unet, dtype)
    hn = hypernet.create(dims=[config["cross_attention_dim"]] + list(config["block_out_channels"][:3]),
                         seed=0).to(device)
    return unet, hn, make_inputs(config_name, device, dtype, latent, batch)


def make_inputs(config_name: str, device: str, dtype, latent: int, batch: int = 1) -> dict:
    """Seeded UNet inputs for one step: noisy latents, a timestep, a 77-token context (and SDXL's extras)."""
    import torch
    config = CONFIGS[config_name]
    generator = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    inputs = {"sample": randn(batch, 4, latent, latent), "timestep": torch.full((batch,), 500, device=device),
              "encoder_hidden_states": randn(batch, 77, config["cross_attention_dim"])}
    if config.get("addition_embed_type") == "text_time":
        inputs["added_cond_kwargs"] = {"text_embeds": randn(batch, 1280),
                                       "time_ids": torch.tensor([[latent * 8] * 2 + [0, 0] + [latent * 8] * 2] * batch,
                                                                device=device, dtype=dtype)}
    return inputs


def trainer_optimizer(params):
    """The trainer's own AdamW (hypernet.train.optimizers.build_optimizer, default options) at a rate that leaves weights be."""
    from hypernet.config import TrainOptions
    from hypernet.train.optimizers import build_optimizer
    return build_optimizer("AdamW", params, TrainOptions(), 1e-12)


def prepare(unet, hn, inputs: dict, variant: str, device: str, dtype, optimizer: bool = True, scaler=None):
    """(step, undo) for one variant on an already built UNet; undo restores the UNet for the next variant.

    `ours` and `webui` end with an AdamW step on the hypernetwork (a full training step); `ours-nocache`
    recomputes the hypernetwork in every layer as the webui does, and `ours-noopt` skips the optimizer step;
    otherwise both are `ours`. Below float32 the UNet runs under autocast; in float16 the loss is scaled by a
    GradScaler (scaler, or a new one), which also steps the optimizer, as in the trainer."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor

    import hypernet
    processors = unet.attn_processors
    opt = None
    # float8 cannot add a gradient to a kept one: the webui's way at fp8 computes the UNet's weight gradients and
    # drops those of the float8 weights after each step
    fp8_params = [p for p in unet.parameters() if p.dtype == torch.float8_e4m3fn] if variant == "webui" else []
    if variant == "floor":
        unet.requires_grad_(False)
        scale = torch.ones((), device=device, requires_grad=True)
        handle = _ScalarHooks(unet, scale)
    else:
        unet.requires_grad_(variant == "webui")
        if variant == "webui":
            unet.set_attn_processor(AttnProcessor())
        hn.requires_grad_(True).train()
        handle = hypernet.attach(unet, [(hn, 1.0)], warn=False, cache=variant in ("ours", "ours-noopt"))
        if optimizer and variant != "ours-noopt":
            opt = trainer_optimizer(hn.parameters())  # a real step that leaves the weights near alone
    autocast = torch.autocast(device, dtype=dtype) if dtype != torch.float32 else None
    if dtype == torch.float16 and scaler is None:
        scaler = torch.amp.GradScaler(device)
    elif dtype != torch.float16:
        scaler = None

    def step():
        if autocast is not None:
            with autocast:
                out = unet(**inputs).sample
        else:
            out = unet(**inputs).sample
        loss = (out.float() ** 2).mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if opt is not None and scaler is not None:
            scaler.step(opt)
            scaler.update()
        elif opt is not None:
            opt.step()
        for p in list(hn.parameters()) + fp8_params:
            p.grad = None
        # the webui's way never zeroes the UNet's gradients; they keep their memory for the whole run

    def undo():
        handle.remove()
        unet.set_attn_processor(processors)
        unet.requires_grad_(False)
        for p in unet.parameters():
            p.grad = None
        hn.requires_grad_(False).eval()
    return step, undo


def run_variant(config_name: str, variant: str, device: str, dtype_name: str, latent: int, repeats: int) -> dict:
    """Build the UNet, run warmup + timed steps of one variant, return seconds/step and peak memory."""
    import torch
    dtype, fp8 = precision(dtype_name)
    unet, hn, inputs = build(config_name, device, dtype, latent, fp8=fp8)
    step, undo = prepare(unet, hn, inputs, variant, device, dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    undo()
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny UNet only")
    parser.add_argument("--configs", default=None, help="comma list of tiny, sd15, sdxl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=tuple(PRECISIONS))
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px; 128 = 1024 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.config, args.variant, args.device, args.dtype, args.latent, args.repeats)))
        return
    configs = ["tiny"] if args.quick else (args.configs.split(",") if args.configs else ["tiny", "sd15"])
    print(f"device {args.device}, {args.dtype}, latent {args.latent}x{args.latent}, median of {args.repeats} steps")
    print(f"{'config':<6} {'variant':<6} {'s/step':>9} {'peak MiB':>9}")
    for name in configs:
        latent = 8 if name == "tiny" else args.latent
        results = {}
        for variant in ("floor", "ours", "webui"):
            cmd = [sys.executable, __file__, "--config", name, "--variant", variant, "--device", args.device,
                   "--dtype", args.dtype, "--latent", str(latent), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:<6} {variant:<6} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[variant]
            print(f"{name:<6} {variant:<6} {r['seconds']:>9.4f} {r['peak_bytes'] / 2 ** 20:>9.0f}")
        if {"floor", "ours", "webui"} <= set(results):
            f, o, w = (results[v] for v in ("floor", "ours", "webui"))
            print(f"{name:<6} ours/floor time {o['seconds'] / f['seconds']:.3f}   webui/ours time "
                  f"{w['seconds'] / o['seconds']:.3f}   webui/ours peak memory {w['peak_bytes'] / o['peak_bytes']:.2f}")


if __name__ == "__main__":
    main()
