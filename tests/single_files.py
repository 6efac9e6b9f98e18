"""Tiny single-file checkpoints in the original layouts, written from real modules, for the single-file loader.

The UNet is ldm's own UNetModel (the class SD1/SD2 files were saved from; SDXL's sgm UNet has the same key layout
plus `label_emb`, added here as sgm builds it), the VAE ldm's own Encoder / Decoder with the quant convs. SD1's
text encoder is transformers' CLIPTextModel, saved the way ldm's FrozenCLIPEmbedder saves it
(`cond_stage_model.transformer.text_model.*`). There is no open_clip package here, so the OpenCLIP towers (SD2,
SDXL's second encoder) are a CLIPTextModel(WithProjection) whose weights are written in open_clip's names
(`transformer.resblocks.N.attn.in_proj_weight`, `ln_1`, `mlp.c_fc`, `positional_embedding`, `text_projection`
as a [width, projection] matrix), which is what open_clip's TextTransformer computes with them.

Sizes follow each family's rules (heads of 64 channels in SD2 / SDXL and in every CLIP tower, GroupNorm of 32, the
49408-token CLIP vocabulary), so the shipped configs' facts apply unchanged; only the widths and depths are small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from models import _reinit_zeros

VOCAB = 49408
LAYOUT = {  # text encoders: (key prefix, layout, width, layers)
    "sd1": [("cond_stage_model.transformer.", "clip", 64, 2)],
    "sd2": [("cond_stage_model.model.", "open_clip", 64, 3)],
    "sdxl": [("conditioner.embedders.0.transformer.", "clip", 64, 2),
             ("conditioner.embedders.1.model.", "open_clip", 64, 2)],
}
POOLED = 32          # SDXL's second encoder projects to this (1280 in SDXL)
TIME_DIM = 16        # SDXL's size-and-crop embedding width per number (256 in SDXL)


@dataclass
class Written:
    """A written checkpoint and the modules it came from (the references the loaded pipeline must match)."""

    path: object
    kind: str
    unet: nn.Module
    encoder: nn.Module
    decoder: nn.Module
    quant_conv: nn.Module
    post_quant_conv: nn.Module
    text: list = field(default_factory=list)      # transformers models, one per text encoder
    state: Dict[str, torch.Tensor] = field(default_factory=dict)


def ldm_unet(kind: str, seed: int = 0) -> nn.Module:
    """ldm's UNetModel, tiny, with the family's attention rules; SDXL's gets sgm's label_emb."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    context = sum(width for _, _, width, _ in LAYOUT[kind])
    common = dict(image_size=8, in_channels=4, out_channels=4, num_res_blocks=1, use_spatial_transformer=True,
                  context_dim=context, use_checkpoint=False, legacy=False)
    if kind == "sd1":
        args = dict(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1, 2), num_heads=8)
    elif kind == "sd2":
        args = dict(model_channels=64, channel_mult=(1, 2), attention_resolutions=(1, 2), num_head_channels=64,
                    use_linear_in_transformer=True)
    else:  # SDXL: no attention on the first level, deeper transformers below
        args = dict(model_channels=64, channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=64,
                    use_linear_in_transformer=True, transformer_depth=2,
                    context_dim=[context, context])  # ldm's SpatialTransformer wants one per layer when deeper
        common.pop("context_dim")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(**common, **args)
        if kind == "sdxl":
            embed = unet.time_embed[0].out_features
            unet.label_emb = nn.Sequential(nn.Sequential(nn.Linear(POOLED + 6 * TIME_DIM, embed), nn.SiLU(),
                                                         nn.Linear(embed, embed)))
            unet.num_classes = "sequential"
    return _reinit_zeros(unet, seed + 1).eval()


def ldm_vae(seed: int = 0):
    """ldm's Encoder / Decoder (8x down, 4 latent channels) and the two 1x1 quant convs of its AutoencoderKL."""
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    dd = dict(ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(), in_channels=3,
              resolution=64, z_channels=4, double_z=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = Encoder(**dd), Decoder(**dd), nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)
    for part in parts:
        _reinit_zeros(part, seed + 2).eval()
    return parts


def clip_text(width: int, layers: int, projection: Optional[int], act: str, seed: int):
    """A transformers CLIP text tower with CLIP's vocabulary and special-token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=width * 4,
                            num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                            max_position_embeddings=77, hidden_act=act, projection_dim=projection or width,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
        for name, p in model.named_parameters():  # layer norms start at 1 / 0; move them so a mix-up shows
            if "norm" in name:
                p.data.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _text_model_keys(model) -> Dict[str, torch.Tensor]:
    """A CLIP text tower's weights named text_model.* as files store them (transformers 5 dropped the level)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        out[k if k.startswith(("text_model.", "text_projection")) else "text_model." + k] = v
    return out


def open_clip_keys(model) -> Dict[str, torch.Tensor]:
    """A CLIPTextModel(WithProjection)'s weights in open_clip's TextTransformer names."""
    sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in _text_model_keys(model).items()}
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"], "ln_final.bias": sd["final_layer_norm.bias"],
           "logit_scale": torch.tensor(4.6052)}
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    else:  # SD2's tower has a projection the UNet never uses
        out["text_projection"] = torch.randn(model.config.hidden_size, model.config.hidden_size)
    for i in range(model.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


def build(kind: str, seed: int = 0, v_like: Optional[bool] = None) -> Written:
    """The modules and the full ldm / sgm state dict of one tiny model; v_like sets the spread of the weight the
    SD2 v-prediction rule reads (True: std 0.3, like a v model; False: 0.01)."""
    unet = ldm_unet(kind, seed)
    encoder, decoder, quant, post_quant = ldm_vae(seed)
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    vae = {"encoder": encoder, "decoder": decoder, "quant_conv": quant, "post_quant_conv": post_quant}
    for name, module in vae.items():
        state.update({f"first_stage_model.{name}.{k}": v for k, v in module.state_dict().items()})
    texts = []
    for n, (prefix, layout, width, layers) in enumerate(LAYOUT[kind]):
        projection = POOLED if kind == "sdxl" and n == 1 else None
        model = clip_text(width, layers, projection, "quick_gelu" if layout == "clip" else "gelu", seed + 10 + n)
        texts.append(model)
        keys = _text_model_keys(model) if layout == "clip" else open_clip_keys(model)
        state.update({prefix + k: v for k, v in keys.items()})
    if v_like is not None:
        last = max(int(k.split(".")[3]) for k in state if k.startswith("model.diffusion_model.output_blocks."))
        key = f"model.diffusion_model.output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 99)
            state[key].copy_(torch.randn_like(state[key]) * (0.3 if v_like else 0.01))
    return Written(None, kind, unet, encoder, decoder, quant, post_quant, texts, state)


def write(path, kind: str, seed: int = 0, v_like: Optional[bool] = None, dtype: torch.dtype = torch.float32,
          extra: Optional[dict] = None) -> Written:
    """Write a tiny `kind` checkpoint to `path`: .safetensors, or .ckpt as lightning saves it
    ({"state_dict": ..., "global_step": ...})."""
    written = build(kind, seed, v_like)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in written.state.items()}
    state.update(extra or {})
    if str(path).endswith(".ckpt"):
        torch.save({"state_dict": state, "global_step": 1234}, str(path))
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    written.path = path
    return written
