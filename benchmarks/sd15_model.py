"""A random-weight SD1.5-shaped diffusers model folder and a folder of noise images, for benchmarks of the real CLI.

    from sd15_model import build_folder, write_images
    model = build_folder("/tmp/sd15")        # StableDiffusionPipeline, SD1.5 shapes, random weights (a few GB)
    model = build_folder("/tmp/x", tiny=True)  # the bundled tiny model, hypernet/assets/tiny-sd: nothing is built
    write_images("/tmp/images", count=4, size=512)

Both return the folder to give the CLI (--model, --data). Nothing is downloaded: the tokenizer is the project's
offline tiny one (hypernet.tiny.model.tokenizer), whose ids fit in CLIP's 49408-token embedding.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from unet_configs import SD15  # noqa: E402

TINY_MODEL = os.path.join(ROOT, "hypernet", "assets", "tiny-sd")


def build_folder(folder: str, tiny: bool = False, dtype=None) -> str:
    """The model folder for --model: tiny-sd as shipped, else a random SD1.5 pipeline saved in folder (kept if there).

    dtype (e.g. torch.float16) sets the saved weights' precision; None keeps float32."""
    if tiny:
        return TINY_MODEL
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return folder
    pipe = _random_pipeline()
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _random_pipeline():
    """A StableDiffusionPipeline with SD1.5's shapes and seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hypernet.tiny.model import tokenizer
    torch.manual_seed(0)
    tok = tokenizer()
    unet = UNet2DConditionModel(**SD15)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=len(tok) - 2,
                                        eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def write_images(folder: str, count: int = 4, size: int = 512) -> str:
    """count random-noise PNGs of size x size with a .txt caption each, seeded; returns folder."""
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"noise{i}.png"))
        with open(os.path.join(folder, f"noise{i}.txt"), "w") as f:
            f.write(f"random noise, pattern {i}")
    return folder
