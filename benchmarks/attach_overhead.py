"""Inference overhead of an attached hypernetwork: time and FLOPs of a UNet forward with hooks on vs off.

For each UNet (a tiny diffusers UNet, and the full SD1.5 UNet built from its config with random weights, nothing
downloaded) this prints:
  - the median time of a forward (batch 1, 4 x LATENT x LATENT latent, 77 x 768 context, torch.no_grad) without and
    with a default-layout hypernetwork ([1, 2, 1], relu) on every width the UNet uses (for SD1.5: 768, 320, 640,
    1280, i.e. hypernet.create()'s default dims), and their ratio;
  - the FLOPs of the same forward counted with torch.utils.flop_counter.FlopCounterMode, hooks off and on, and the
    hypernetwork's share computed by hand: for each to_k / to_v call, tokens x 2 x (in x out) summed over the
    module's Linear layers (activations and the residual add are not counted, as FlopCounterMode does not count
    them either), so the counted difference and the hand figure should agree.

Usage: python benchmarks/attach_overhead.py [--quick] [--latent 64] [--repeats N] [--warmup N] [--threads N]
--quick runs only the tiny UNet. Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import hypernet  # noqa: E402

from unet_configs import SD15, TINY  # noqa: E402


def build(config: dict):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval().requires_grad_(False)


def inputs(latent: int, tokens: int = 77, width: int = 768) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(1, 4, latent, latent, generator=gen), "timestep": torch.tensor([500]),
            "encoder_hidden_states": torch.randn(1, tokens, width, generator=gen), "return_dict": False}


def forward(unet, kwargs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**kwargs)[0]


def count_flops(unet, kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        forward(unet, kwargs)
    return counter.get_total_flops()


def projection_tokens(unet, kwargs) -> list:
    """(width, tokens) for every to_k / to_v call of one forward, recorded with plain pre-hooks."""
    calls, handles = [], []
    for site in hypernet.find_attention(unet):
        for proj in (site.module.to_k, site.module.to_v):
            handles.append(proj.register_forward_pre_hook(
                lambda m, args: calls.append((args[0].shape[-1], args[0].numel() // args[0].shape[-1]))))
    try:
        forward(unet, kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


def hand_flops(hn, calls) -> int:
    """2 x in x out per token for each Linear of the module that each to_k / to_v call runs through."""
    per_token = {}
    for dim in hn.dims:
        k, v = hn.modules_for(dim)
        per_token[dim] = [sum(2 * layer.in_features * layer.out_features for layer in module.linear
                              if isinstance(layer, torch.nn.Linear)) for module in (k, v)]
    # calls alternate to_k, to_v for each site; k and v modules have the same shape, so either gives the count
    return sum(tokens * per_token[width][0] for width, tokens in calls if width in per_token)


def timed(unet, kwargs, hn, repeats: int, warmup: int):
    """Median seconds without and with the hypernetwork, runs interleaved so drift hits both alike."""
    for _ in range(warmup):
        forward(unet, kwargs)
        with hypernet.attach(unet, hn, warn=False):
            forward(unet, kwargs)
    base, hooked = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        forward(unet, kwargs)
        base.append(time.perf_counter() - t)
        with hypernet.attach(unet, hn, warn=False):
            t = time.perf_counter()
            forward(unet, kwargs)
            hooked.append(time.perf_counter() - t)
    return statistics.median(base), statistics.median(hooked), base, hooked


def run(name: str, config: dict, latent: int, repeats: int, warmup: int) -> None:
    t0 = time.perf_counter()
    unet = build(config)
    kwargs = inputs(latent, width=config["cross_attention_dim"])
    widths = sorted({s.width for s in hypernet.find_attention(unet)})
    hn = hypernet.create(dims=widths, layer_structure=(1, 2, 1), seed=0)
    unet_params = sum(p.numel() for p in unet.parameters())
    print(f"\n== {name}: UNet {unet_params / 1e6:.1f} M params, built in {time.perf_counter() - t0:.1f} s; "
          f"hypernetwork dims {hn.dims}, [1, 2, 1], {hn.parameter_count() / 1e6:.2f} M params; "
          f"latent 4x{latent}x{latent}, context 77x{config['cross_attention_dim']}, batch 1")

    with hypernet.attach(unet, hn, warn=False):
        hooked_out = forward(unet, kwargs)
    base_out = forward(unet, kwargs)
    print(f"   output changed by the hypernetwork: max |diff| {(hooked_out - base_out).abs().max():.3e}")

    calls = projection_tokens(unet, kwargs)
    base_flops = count_flops(unet, kwargs)
    with hypernet.attach(unet, hn, warn=False):
        hooked_flops = count_flops(unet, kwargs)
    hn_counted = hooked_flops - base_flops
    hn_hand = hand_flops(hn, calls)
    by_width = {}
    for width, tokens in calls:
        by_width.setdefault(width, [0, 0])
        by_width[width][0] += 1
        by_width[width][1] += tokens
    print("   hooked k/v projection calls by width (calls, tokens in all): "
          + ", ".join(f"{w}: {c} calls, {t} tokens" for w, (c, t) in sorted(by_width.items())))
    print(f"   FLOPs  UNet {base_flops / 1e9:.3f} G; hypernetwork counted {hn_counted / 1e9:.3f} G, "
          f"by hand {hn_hand / 1e9:.3f} G; theoretical ratio with/without "
          f"{hooked_flops / base_flops:.4f} (+{100 * hn_counted / base_flops:.2f} %)")

    base_t, hooked_t, base_all, hooked_all = timed(unet, kwargs, hn, repeats, warmup)
    print(f"   time   without {base_t * 1e3:.1f} ms, with {hooked_t * 1e3:.1f} ms (median of {repeats}; "
          f"all without {[round(x * 1e3, 1) for x in base_all]}, with {[round(x * 1e3, 1) for x in hooked_all]})")
    print(f"   RATIO  measured {hooked_t / base_t:.4f}   theoretical (FLOPs) {hooked_flops / base_flops:.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the tiny UNet")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = a 512x512 image)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per variant (tiny 20, SD1.5 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    run("tiny diffusers UNet (32/64 channels, cross 768)", TINY, args.latent, args.repeats or 20, args.warmup)
    if not args.quick:
        run("SD1.5 UNet (random weights)", SD15, args.latent, args.repeats or 3, args.warmup)


if __name__ == "__main__":
    main()
