"""Train the built-in tiny Stable Diffusion model from scratch on generated scenes (``python -m hypernet.tiny build``).

Three stages, all seeded and on the CPU (one thread: on a small, shared machine that is both the fastest and the
reproducible setting):

1. the VAE (a diffusers AutoencoderKL, 64x64 RGB <-> 8x8x4 latents) on fresh scenes: reconstruction + a small KL
   term; then ``scaling_factor`` is set so that the scaled latents have unit standard deviation;
2. a pool of scenes is encoded once with the finished VAE (latent mean and std per image);
3. the text encoder (a CLIPTextModel) and the UNet (a UNet2DConditionModel with cross-attention) together, with
   epsilon prediction on SD's scaled-linear noise schedule, min-SNR loss weights, captions with parts left out at
   random (so short prompts work) and dropped entirely 10% of the time (so classifier-free guidance works), and an
   EMA of the weights, which is what is saved.

The step counts are fixed (``scale`` multiplies them), so a build is deterministic for a seed, a torch version and
a machine; ``minutes`` adds a wall-clock cap that ends stages early, which gives up that determinism.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import model as tiny
from .scenes import COLOURS, POSITIONS, SHAPES, WORDS, Scene, describe, random_scene

MAX_TOKENS = 32  # captions are at most ~15 tokens; SD's 77 would only make every step slower
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=MAX_TOKENS)
VAE_CHANNELS = (8, 16, 32, 32)
# Few norm groups: a GroupNorm over 8x8 latents or flat-coloured 64x64 maps removes each group's mean, and with one
# channel per group that is the absolute colour; with all channels in one group only the relative pattern is kept.
VAE_GROUPS = 2
UNET_GROUPS = 4
# A 7x7 output convolution over the 8x8 latent: with zero padding, which of its taps fall inside the map differs from
# cell to cell, so a feature the cross-attention spreads uniformly ("left") can come out as mass in one place. With 3x3
# the tiny UNet learned colours but never positions.
UNET_CONV_OUT = 7
UNET_BLOCKS = (32, 64)
UNET_HEADS = (2, 4)  # attention heads per block: 16 channels each

# Default stage lengths (scaled by `scale`); ~25 minutes on one busy CPU core.
VAE_STEPS, VAE_BATCH = 1600, 16
POOL = 24000
UNET_STEPS, UNET_BATCH = 2000, 64


def build_modules(vocab_size: int, seed: int, vae_groups: int = VAE_GROUPS, unet_groups: int = UNET_GROUPS,
                  blocks=None, heads=None, conv_out: int = UNET_CONV_OUT):
    """Fresh (random) text encoder, VAE and UNet with the tiny model's shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    blocks, heads = tuple(blocks or UNET_BLOCKS), list(heads or UNET_HEADS)
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, projection_dim=TEXT["hidden_size"],
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1, **TEXT))
    n = len(VAE_CHANNELS)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=VAE_CHANNELS,
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        layers_per_block=1, norm_num_groups=vae_groups, sample_size=64)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=blocks, norm_num_groups=unet_groups, conv_out_kernel=conv_out,
                                cross_attention_dim=TEXT["hidden_size"], attention_head_dim=heads,
                                down_block_types=("CrossAttnDownBlock2D",) * len(blocks),
                                up_block_types=("CrossAttnUpBlock2D",) * len(blocks))
    return text, vae, unet


def to_tensor(images) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] in [-1, 1]."""
    import numpy as np
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Clock:
    """Stage time caps when `minutes` is given (shares of the total), else never out of time."""

    def __init__(self, minutes: Optional[float]):
        self.minutes = minutes

    def deadline(self, share: float) -> float:
        return float("inf") if self.minutes is None else time.perf_counter() + self.minutes * 60 * share


def _bar(total: int, desc: str, show: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not show, dynamic_ncols=True, file=sys.stderr)


def train_vae(vae, rng: random.Random, steps: int, batch: int, deadline: float, show: bool,
              lr: float = 5e-3, kl_weight: float = 1e-3, clip: float = 1.0) -> Dict[str, float]:
    """Reconstruction (MSE + L1 on [-1, 1] pixels) + kl_weight x per-latent KL; fresh scenes every step."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    vae.train()
    rec = kl = float("nan")
    bar = _bar(steps, "vae", show)
    done = 0
    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, min(100, steps // 10 + 1))
        x = to_tensor([random_scene(rng, shapes=2 if rng.random() < 0.25 else 1).render() for _ in range(batch)])
        posterior = vae.encode(x).latent_dist
        out = vae.decode(posterior.sample(generator=gen)).sample
        rec_loss = F.mse_loss(out, x) + 0.5 * F.l1_loss(out, x)
        kl_loss = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec_loss + kl_weight * kl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(vae.parameters(), clip)
        opt.step()
        rec = 0.9 * rec + 0.1 * rec_loss.item() if step else rec_loss.item()
        kl = kl_loss.item()
        done += 1
        bar.update(1)
        bar.set_postfix(rec=f"{rec:.4f}", kl=f"{kl:.2f}", grad=f"{gnorm:.2f}")
    bar.close()
    vae.eval()
    return {"vae_steps": done, "vae_reconstruction_loss": rec, "vae_kl": kl}


@torch.no_grad()
def encode_pool(vae, rng: random.Random, count: int, show: bool, batch: int = 128):
    """`count` scenes, and their latent means and stds (unscaled)."""
    scenes: List[Scene] = [random_scene(rng) for _ in range(count)]
    means, stds = [], []
    bar = _bar(count, "encode", show)
    for i in range(0, count, batch):
        dist = vae.encode(to_tensor([s.render() for s in scenes[i:i + batch]])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        bar.update(len(scenes[i:i + batch]))
    bar.close()
    return scenes, torch.cat(means), torch.cat(stds)


def training_caption(s: Scene, rng: random.Random) -> str:
    """The caption with parts left out at random; empty 10% of the time (the unconditional case for guidance)."""
    if rng.random() < 0.1:
        return ""
    return s.caption(colour=rng.random() > 0.1, position=rng.random() > 0.15, background=rng.random() > 0.2)


def train_unet(text, unet, tok, scenes, means, stds, scaling: float, rng: random.Random, steps: int, batch: int,
               deadline: float, show: bool, lr: float = 2e-3, ema_decay: float = 0.995, min_snr: float = 5.0,
               weighting: str = "x0"):
    """Joint text encoder + UNet training; returns the EMA copies and stats."""
    sched = tiny.scheduler("sd1")
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    if weighting == "x0":
        # epsilon error / alpha_bar = the error of the implied x0 (v-prediction-like): the layout, decided at high
        # noise where the epsilon loss hardly sees it, gets its share of the gradient. Normalised to mean 1.
        weight = 1.0 / alphas
        weight = weight / weight.mean()
    else:  # min-SNR-gamma
        weight = torch.clamp(snr, max=min_snr) / snr
    params = list(text.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    ema_text, ema_unet = copy.deepcopy(text).eval(), copy.deepcopy(unet).eval()
    ema_params = list(ema_text.parameters()) + list(ema_unet.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    text.train()
    unet.train()
    avg = float("nan")
    bar = _bar(steps, "unet", show)
    done = 0
    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, min(200, steps // 10 + 1))
        idx = torch.randint(len(scenes), (batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        ids = tok([training_caption(scenes[i], rng) for i in idx.tolist()], padding="max_length",
                  max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, text(ids)[0]).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1 - decay)
        avg = 0.98 * avg + 0.02 * loss.item() if step else loss.item()
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{avg:.4f}")
    bar.close()
    return ema_text, ema_unet, {"unet_steps": done, "unet_loss": avg}


def assemble(text, vae, unet, tok):
    """A StableDiffusionPipeline (DDIM, no safety checker, no progress bar) from the parts."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=tiny.scheduler("sd1"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts, seeds, steps: int = 20, cfg: float = 5.0, batch: int = 16):
    """One 64x64 image per (prompt, seed), in batches; deterministic."""
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        images += pipe(list(prompts[i:i + batch]), num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                       width=64, height=64).images
    return images


def sample(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, cfg: float = 5.0):
    """64x64 PIL images, one per (prompt, seed), deterministic; see generate."""
    return generate(pipe, list(prompts), list(seeds), steps, cfg)


def evaluate(pipe, count: int = 40, seed: int = 1234, steps: int = 20, cfg: float = 5.0) -> Dict[str, float]:
    """How often generated images show what the full caption asks for (read back with scenes.describe).

    Chance levels: background and shape colour ~1/8, position 1/5, kind 1/3.
    """
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    images = generate(pipe, [s.caption() for s in scenes], [seed + i for i in range(count)], steps, cfg)
    hits = {"background": 0, "colour": 0, "position": 0, "kind": 0}
    for s, img in zip(scenes, images):
        got = describe(img)
        want = {"background": s.background, "colour": s.shapes[0].colour, "position": s.shapes[0].position,
                "kind": s.shapes[0].kind}
        for k in hits:
            hits[k] += got[k] == want[k]
    return {k: v / count for k, v in hits.items()}


def sample_grid(pipe, path, seed: int = 7, steps: int = 20, cfg: float = 5.0):
    """A 8x5 grid: colours across, positions down (shape and background fixed per row)."""
    from PIL import Image
    rows = []
    for r, position in enumerate(POSITIONS):
        kind = SHAPES[r % len(SHAPES)]
        background = ("white", "black", "blue", "yellow", "green")[r]
        prompts = [f"a {c} {kind} {POSITIONS[position][0]}, {background} background" for c in COLOURS]
        rows.append(generate(pipe, prompts, [seed + i for i in range(len(prompts))], steps, cfg))
    out = Image.new("RGB", (64 * len(COLOURS), 64 * len(rows)))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out.paste(img, (64 * c, 64 * r))
    out.save(path)
    return path


def save(out_dir, text, vae, unet, tok, tok_dir, info: dict, dtype=torch.float16) -> Path:
    """Write model.safetensors (all three modules, prefixed), config.json and the tokenizer files."""
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for prefix, module in (("text_encoder", text), ("vae", vae), ("unet", unet)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to(dtype).contiguous()
    save_file(tensors, str(out / tiny.WEIGHTS), metadata={"format": "pt", "source": "python -m hypernet.tiny build"})
    config = {"text_encoder": text.config.to_dict(), "vae": json.loads(vae.to_json_string()),
              "unet": json.loads(unet.to_json_string()),
              "scheduler": json.loads(tiny.scheduler("sd1").to_json_string()),
              "tokenizer": {"folder": "tokenizer", "model_max_length": tok.model_max_length}, "build": info}
    (out / tiny.CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
    tdir = out / "tokenizer"
    tdir.mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (tdir / name).write_bytes(Path(tok_dir, name).read_bytes())
    return out


def build(out_dir=None, seed: int = 0, scale: float = 1.0, minutes: Optional[float] = None, show: bool = True,
          samples: bool = True, log: Callable[[str], None] = print) -> dict:
    """The whole build; returns what it measured (also stored under "build" in config.json)."""
    out = Path(out_dir) if out_dir else tiny.ASSETS
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            rng = random.Random(seed)
            tok_dir = tiny.write_word_tokenizer(out / "tokenizer", WORDS)
            tok = tiny.load_tokenizer(tok_dir, MAX_TOKENS)
            text, vae, unet = build_modules(len(tok), seed)
            clock = _Clock(minutes)
            info: dict = {"seed": seed, "scale": scale, "minutes_cap": minutes, "torch": torch.__version__,
                          "python": platform.python_version(), "threads": 1}
            t0 = time.perf_counter()
            info.update(train_vae(vae, rng, max(1, round(VAE_STEPS * scale)), VAE_BATCH, clock.deadline(0.22), show))
            info["vae_seconds"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            scenes, means, stds = encode_pool(vae, rng, max(64, round(POOL * scale)), show)
            sample = means + stds * torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))
            scaling = float(1.0 / sample.std())
            vae.register_to_config(scaling_factor=scaling)
            info.update(pool=len(scenes), scaling_factor=scaling, encode_seconds=round(time.perf_counter() - t0, 1))
            t0 = time.perf_counter()
            text, unet, stats = train_unet(text, unet, tok, scenes, means, stds, scaling, rng,
                                           max(1, round(UNET_STEPS * scale)), UNET_BATCH, clock.deadline(0.7), show)
            info.update(stats)
            info["unet_seconds"] = round(time.perf_counter() - t0, 1)
            pipe = assemble(text, vae, unet, tok)
            if samples:
                t0 = time.perf_counter()
                info["prompt_accuracy"] = evaluate(pipe)
                info["eval_seconds"] = round(time.perf_counter() - t0, 1)
            info["params"] = {n: sum(p.numel() for p in m.parameters())
                              for n, m in (("text_encoder", text), ("vae", vae), ("unet", unet))}
            info["build_seconds"] = round(time.perf_counter() - started, 1)
            save(out, text, vae, unet, tok, tok_dir, info)
            if samples:
                sample_grid(pipe, out / "samples.png")
    finally:
        torch.set_num_threads(threads)
    log(f"wrote {out} in {info['build_seconds']:.0f} s" + (
        f"; prompt accuracy {info['prompt_accuracy']}" if samples else ""))
    return info
