"""Tiny Stable Diffusion pipelines built in code from the real diffusers / transformers classes, offline.

They serve the tests (random weights, SD1 / SD2-v / SDXL shapes) and the built-in demo model. The tokenizer is a
CLIPTokenizer over a byte-level vocabulary written by this module, so nothing is fetched from a hub.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from typing import Optional

import torch

# Widths of the tiny models: what a hypernetwork for them needs.
KINDS = {
    "sd1": {"cross": 32, "prediction": "epsilon"},
    "sd2": {"cross": 48, "prediction": "v_prediction"},
    "sdxl": {"cross": 64, "prediction": "epsilon"},   # two 32-wide text encoders, concatenated as in SDXL
}
BLOCKS = (32, 64)  # UNet block widths = self-attention widths


def _bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable-character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def _tokenizer_files() -> str:
    """A folder with vocab.json / merges.txt for a character-level CLIP tokenizer (cached per process)."""
    folder = tempfile.mkdtemp(prefix="hypernet-tok-")
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
    return folder


def tokenizer(max_length: int = 77):
    """A CLIPTokenizer with a byte-level vocabulary (514 tokens), built offline."""
    from transformers import CLIPTokenizer
    folder = _tokenizer_files()
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                        model_max_length=max_length, pad_token="<|endoftext|>")
    if len(tok) < 500:
        raise RuntimeError("tiny tokenizer came out empty")
    return tok


def _text_encoder(hidden: int, vocab: int, projection: Optional[int] = None, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                            num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                            pad_token_id=vocab - 1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def vae(channels=(16, 32, 32, 32)):
    """A tiny AutoencoderKL with the SD latent layout: 4 channels, 8x downsampling."""
    from diffusers import AutoencoderKL
    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(channels),
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=1, norm_num_groups=8, sample_size=64)


def unet(kind: str, blocks=BLOCKS):
    """A tiny UNet2DConditionModel for one kind ('sd1', 'sd2', 'sdxl')."""
    from diffusers import UNet2DConditionModel
    cross = KINDS[kind]["cross"]
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=tuple(blocks),
                  norm_num_groups=8, cross_attention_dim=cross,
                  down_block_types=("CrossAttnDownBlock2D",) * len(blocks),
                  up_block_types=("CrossAttnUpBlock2D",) * len(blocks))
    if kind == "sd1":
        return UNet2DConditionModel(**common, attention_head_dim=8)
    if kind == "sd2":
        return UNet2DConditionModel(**common, attention_head_dim=[2] * len(blocks), use_linear_projection=True)
    return UNet2DConditionModel(**common, attention_head_dim=[2] * len(blocks), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=32 + 6 * 8)


def scheduler(kind: str):
    """A DDIM scheduler with SD's training noise schedule (what previews sample with)."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=KINDS[kind]["prediction"])


def pipeline(kind: str = "sd1", seed: int = 0):
    """A complete tiny diffusers pipeline with random weights; kind is 'sd1', 'sd2' (v-prediction) or 'sdxl'."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = tokenizer()
        if kind == "sdxl":
            te1 = _text_encoder(32, len(tok))
            te2 = _text_encoder(32, len(tok), projection=32)
            pipe = StableDiffusionXLPipeline(vae=vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                             tokenizer_2=tokenizer(), unet=unet(kind), scheduler=scheduler(kind))
        else:
            pipe = StableDiffusionPipeline(vae=vae(), text_encoder=_text_encoder(KINDS[kind]["cross"], len(tok)),
                                           tokenizer=tok, unet=unet(kind), scheduler=scheduler(kind),
                                           safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
