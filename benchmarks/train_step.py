"""Time of one hypernetwork training step against the floor, and against the webui's way of training.

Variants, each run in its own process so peak memory is its own (same script, same machine, same inputs):
  floor   the frozen UNet, forward + backward from the same attention inputs, no hypernetwork: every to_k / to_v
          input is scaled by one trainable scalar, so backward covers exactly what ours must cover, minus the MLPs
  ours    frozen UNet + hypernetwork hooks, backward into the hypernetwork only, SDP attention
  webui   the webui's way: UNet parameters left trainable (gradients computed for all of them), naive attention
          (the webui's Train tab undoes attention optimisations), same hypernetwork

Usage: python benchmarks/train_step.py [--quick] [--device cuda] [--dtype fp16] [--latent 64] [--repeats 3]
Prints seconds per step, peak memory, and the ratios ours/floor and webui/ours. Nothing here is asserted.
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


def run_variant(config_name: str, variant: str, device: str, dtype_name: str, latent: int, repeats: int) -> dict:
    """Build the UNet, run warmup + timed steps of one variant, return seconds/step and peak memory."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    import hypernet
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    config = CONFIGS[config_name]
    unet = UNet2DConditionModel(**config).to(device, dtype)
    width = config["cross_attention_dim"]
    hn = hypernet.create(dims=[width] + list(config["block_out_channels"][:3]), seed=0).to(device)
    x = torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
    ctx = torch.randn(1, 77, width, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    extra = {}
    if config.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, device=device, dtype=dtype),
                                      "time_ids": torch.tensor([[latent * 8] * 2 + [0, 0] + [latent * 8] * 2],
                                                               device=device, dtype=dtype)}
    handle = None
    if variant == "floor":
        unet.requires_grad_(False)
        scale = torch.ones((), device=device, requires_grad=True)
        handle = _ScalarHooks(unet, scale)
    elif variant == "ours":
        unet.requires_grad_(False)
        hn.requires_grad_(True).train()
        handle = hypernet.attach(unet, [(hn, 1.0)], warn=False)
    else:
        unet.requires_grad_(True)
        unet.set_attn_processor(AttnProcessor())
        hn.requires_grad_(True).train()
        handle = hypernet.attach(unet, [(hn, 1.0)], warn=False)
    autocast = torch.autocast(device, dtype=dtype) if device == "cuda" and dtype != torch.float32 else None

    def step():
        inp = x.detach()
        if autocast is not None:
            with autocast:
                out = unet(inp, t, encoder_hidden_states=ctx, **extra).sample
        else:
            out = unet(inp, t, encoder_hidden_states=ctx, **extra).sample
        loss = (out.float() ** 2).mean()
        loss.backward()
        if variant == "ours" or variant == "webui":
            for p in hn.parameters():
                p.grad = None
        if variant == "webui":
            pass  # the webui never zeroes the UNet's gradients; they keep their memory for the whole run

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
    if handle is not None:
        handle.remove()
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny UNet only")
    parser.add_argument("--configs", default=None, help="comma list of tiny, sd15, sdxl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
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
