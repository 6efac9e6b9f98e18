"""Tiny Stable Diffusion pipelines built in code from the real diffusers / transformers classes, offline.

They serve the tests (random weights, SD1 / SD2-v / SDXL shapes) and the built-in demo model. The tokenizer is a
CLIPTokenizer over a byte-level vocabulary written by this module, so nothing is fetched from a hub.

The built-in *trained* model ships in hypernet/assets/tiny-sd (see the README.md there): ``load_pipeline()`` builds it
offline. ``python -m hypernet.tiny build`` retrains it (tiny/build.py), ``python -m hypernet.tiny sample
"a red circle on the left, blue background" --out x.png`` draws with it.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..hosts.clip_tokenizer import bytes_to_unicode
# Widths of the tiny models: what a hypernetwork for them needs.
KINDS: Dict[str, Dict[str, Any]] = {
    "sd1": {"cross": 32, "prediction": "epsilon"},
    "sd2": {"cross": 48, "prediction": "v_prediction"},
    "sdxl": {"cross": 64, "prediction": "epsilon"},   # two 32-wide text encoders, concatenated as in SDXL
}
BLOCKS = (32, 64)  # UNet block widths = self-attention widths

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tiny-sd"  # the shipped trained model
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@lru_cache(maxsize=1)
def _tokenizer_files() -> str:
    """A folder with vocab.json / merges.txt for a character-level CLIP tokenizer (cached per process)."""
    folder = tempfile.mkdtemp(prefix="hypernet-tok-")
    chars = list(bytes_to_unicode().values())
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


def is_model_folder(path: Path) -> bool:
    """A folder in the tiny model's layout (hypernet/assets/tiny-sd, or one `python -m hypernet.tiny build` wrote)."""
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()

def tokenizer(max_length: int = 77):
    """A CLIPTokenizer with a byte-level vocabulary (514 tokens), built offline."""
    from transformers import CLIPTokenizer
    folder = _tokenizer_files()
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                        model_max_length=max_length, pad_token="<|endoftext|>")
    if len(tok) < 500:
        raise RuntimeError("tiny tokenizer came out empty")
    return tok


def _bpe(word: tuple, ranks: dict) -> tuple:
    """CLIP's byte-pair merge loop for one word (a tuple of symbols), as the tokenizer applies it."""
    while len(word) > 1:
        pairs = [(ranks.get(p, float("inf")), i, p) for i, p in enumerate(zip(word, word[1:]))]
        rank, _, best = min(pairs)
        if rank == float("inf"):
            break
        out, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = tuple(out)
    return word


def write_word_tokenizer(folder, words) -> str:
    """Write vocab.json / merges.txt for a CLIP tokenizer that keeps each of `words` as one token.

    The vocabulary is the byte-level one of `tokenizer()` (any text still encodes, a character at a time) plus BPE
    merges that assemble each listed word; the two special tokens come last, as in `tokenizer()`.
    """
    os.makedirs(folder, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list = []
    ranks: dict = {}
    for word in words:
        word = word.lower()
        symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
        while True:
            # Each new merge ranks after all earlier ones, so it never changes how earlier words split.
            pieces = _bpe(symbols, ranks)
            if len(pieces) == 1:
                break
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False, indent=0)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return str(folder)


def load_tokenizer(folder, max_length: int = 77):
    """The CLIPTokenizer stored in `folder` (vocab.json / merges.txt), offline."""
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                        model_max_length=max_length, pad_token="<|endoftext|>")
    if len(tok) < 500:
        raise RuntimeError(f"tokenizer in {folder} came out empty")
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


def _own_key_names(part: dict, module: torch.nn.Module, inner: str = "text_model.") -> dict:
    """`part` keyed the way `module` names its weights: CLIPTextModel calls them text_model.* in transformers 4
    and drops that prefix in 5, and the stored file has one of the two."""
    expected = module.state_dict().keys()
    if set(part) == set(expected):
        return part
    bare = {k[len(inner):] if k.startswith(inner) else k: v for k, v in part.items()}
    if any(k.startswith(inner) for k in expected):
        return {inner + k: v for k, v in bare.items()}
    return bare


def load_pipeline(folder=None, device="cpu", dtype: torch.dtype = torch.float32):
    """The trained tiny model (hypernet/assets/tiny-sd, or `folder` from a build) as a StableDiffusionPipeline.

    Built from the real diffusers / transformers classes and the stored configs; weights are read from
    model.safetensors (stored as float16, loaded as `dtype`). No network. 64x64 images, 8x8x4 latents, a DDIM
    scheduler, no safety checker, progress bar off.
    """
    from ..hosts.diffusers import quiet_imports
    quiet_imports()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel
    from ..errors import HypernetError
    folder = Path(folder) if folder else ASSETS
    weights, config_path = folder / WEIGHTS, folder / CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise HypernetError(f"the tiny model's weights are missing ({weights}); build them with "
                            f"`python -m hypernet.tiny build`" + (f" --out {folder}" if folder != ASSETS else ""))
    config = json.loads(config_path.read_text())
    tok = load_tokenizer(folder / config["tokenizer"]["folder"], config["tokenizer"]["model_max_length"])
    text_cfg = {k: v for k, v in config["text_encoder"].items() if k not in ("architectures", "transformers_version")}
    modules = {"text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)),
               "vae": AutoencoderKL.from_config(config["vae"]),
               "unet": UNet2DConditionModel.from_config(config["unet"])}
    state = load_file(str(weights))
    for name, module in modules.items():
        prefix = name + "."
        part = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(_own_key_names(part, module), strict=True)
        module.eval().requires_grad_(False)
        if dtype != torch.float32 or torch.device(device).type != "cpu":
            module.to(device=device, dtype=dtype)
    pipe = StableDiffusionPipeline(**modules, tokenizer=tok, scheduler=DDIMScheduler.from_config(config["scheduler"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe

