"""Single-file Stable Diffusion checkpoints (.safetensors / .ckpt, the original ldm / sgm layouts) as diffusers
pipelines, with no network.

What the weights say, the loader reads from them: the family (SD1, SD2, SDXL) from the key layout, every size
(channels, levels, layers per block, transformer depth, context width, text encoder widths and layer counts) from the
tensor shapes. What weights cannot say ships in hypernet/assets/configs: the noise schedule, the tokenizer, the VAE's
latent scale, activation functions and the attention head rule of each family. A real SD1.5 / SD2.1 / SDXL file
therefore loads into exactly the shipped configs, and a tiny file of the same layout (the tests') into tiny models.

v-prediction or epsilon (SD2 only; SD1 and SDXL are epsilon unless a `v_pred` key marks the file, as some SDXL
fine-tunes do): ComfyUI's rule, the standard deviation of the last output block's first transformer `norm1.bias`
above 0.09 means v (real 768-v files lie well above, 512-base files below). It is a heuristic on trained weights;
`prediction_type=` (the CLI's `--prediction-type`) overrides it.

Bytes are read once, one model part at a time (a 7 GB SDXL file never sits in memory twice): a .safetensors file is
memory-mapped once its header passed hypernet/fileformat/container.py's checks; a .ckpt is a pickle, read through
that module's restricted reader, and one that asks for anything but tensors is refused unread.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import HypernetError, UnsafeFileError
from ..fileformat.container import Container, Reader, TensorRef, read as read_container
from .clip_tokenizer import clip_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "configs"
UNET, VAE = "model.diffusion_model.", "first_stage_model."
# (pipeline component, key prefix, layout) of each family's text encoders
TEXT_ENCODERS = {
    "sd1": [("text_encoder", "cond_stage_model.transformer.", "clip")],
    "sd2": [("text_encoder", "cond_stage_model.model.", "open_clip")],
    "sdxl": [("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
             ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip")],
}
KINDS = ("auto", "sd1", "sd2", "sdxl")
PREDICTIONS = {"auto": None, "epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction",
               "v_prediction": "v_prediction"}
V_STD_THRESHOLD = 0.09   # ComfyUI's (comfy/supported_models.py, SD20.model_type)
HEAD_CHANNELS = 64       # SD2 / SDXL UNets and every CLIP text tower: 64 channels per attention head


@dataclass
class Checkpoint:
    """A single-file checkpoint parsed but not read: tensor descriptions by key, and the container to read from."""

    path: str
    container: Container
    refs: Dict[str, TensorRef]

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {k: tuple(r.shape) for k, r in self.refs.items()}

    def read(self, prefix: str, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
        """Every tensor whose key starts with `prefix` (full keys), floats cast to `dtype`; one read per call."""
        keys = [k for k in self.refs if k.startswith(prefix)]
        cast = (lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        if self.container.kind == "safetensors":
            # header already checked by container.read; safetensors maps the file, so a cast reads each byte
            # once straight from the page cache (half the time of copying it in first, and no second copy)
            from safetensors import safe_open
            with safe_open(self.path, framework="pt") as fh:
                return {k: cast(fh.get_tensor(k)) for k in keys}
        with Reader(self.container) as reader:
            return {k: cast(reader.tensor(self.refs[k])) for k in keys}


def open_checkpoint(path) -> Checkpoint:
    """Parse a .safetensors or .ckpt file's tensor list (no tensor bytes); HypernetError if unreadable or unsafe."""
    try:
        container = read_container(path)
    except UnsafeFileError as exc:
        reason = str(exc).split("(", 1)[-1].split(")", 1)[0]
        raise HypernetError(f"--model {path}: refused: this .ckpt asks the unpickler for more than tensors ({reason}), "
                            "which may be code; nothing in it ran. Use the model's .safetensors release, or re-save "
                            "its state_dict as .safetensors with a tool you trust") from None
    if container.tensors is not None:
        refs = dict(container.tensors)
    else:
        obj = container.obj
        while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # lightning checkpoints wrap the weights, sometimes twice
        refs = {k: v for k, v in obj.items() if isinstance(v, TensorRef)} if isinstance(obj, dict) else {}
    if not refs:
        raise HypernetError(f"--model {path}: holds no weights (no state_dict of tensors); is it a checkpoint?")
    return Checkpoint(str(path), container, refs)


# ---------------------------------------------------------------------------------------------- what the keys say
def _has(shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _indices(shapes, prefix: str) -> List[int]:
    """The sorted numbers that follow `prefix` in the keys (block or layer indices)."""
    found = set()
    for key in shapes:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def detect_kind(shapes, path="") -> str:
    """'sd1', 'sd2' or 'sdxl' from the key layout; HypernetError for files this loader does not take."""
    if not _has(shapes, UNET) or not _has(shapes, VAE):
        part = "UNet (model.diffusion_model.*)" if not _has(shapes, UNET) else "VAE (first_stage_model.*)"
        raise HypernetError(f"--model {path}: has no {part}; a single-file model holds the UNet, VAE and text "
                            "encoders (a UNet- or LoRA-only file, or a VAE alone, cannot be trained on)")
    if _has(shapes, "conditioner.embedders.1.model."):
        kind = "sdxl"
    elif _has(shapes, "conditioner."):
        raise HypernetError(f"--model {path}: looks like an SDXL refiner (one OpenCLIP text encoder under "
                            "conditioner.embedders.0); train on the SDXL base model instead")
    elif _has(shapes, "cond_stage_model.model."):
        kind = "sd2"
    elif _has(shapes, "cond_stage_model.transformer."):
        kind = "sd1"
    else:
        raise HypernetError(f"--model {path}: has a UNet but no text encoder this loader knows "
                            "(cond_stage_model.transformer / cond_stage_model.model / conditioner.embedders)")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or conv_in[1] != 4:
        raise HypernetError(f"--model {path}: its UNet takes {conv_in[1] if conv_in else '?'} input channels, not "
                            "4: an inpainting or instruct model; train on the base model it was made from")
    return kind


def norm_bias_key(shapes) -> Optional[str]:
    """The key the SD2 v-prediction rule reads: the last output block's first transformer norm1.bias
    (output_blocks.11.1.transformer_blocks.0.norm1.bias in a full-size SD2)."""
    blocks = _indices(shapes, UNET + "output_blocks.")
    key = f"{UNET}output_blocks.{blocks[-1]}.1.transformer_blocks.0.norm1.bias" if blocks else None
    return key if key in shapes else None


def detect_prediction(ckpt: Checkpoint, kind: str) -> Tuple[str, str]:
    """('epsilon' | 'v_prediction', why) from the weights; see the module docstring for the rule."""
    if "v_pred" in ckpt.refs:
        return "v_prediction", "the file has a v_pred key"
    if kind != "sd2":
        return "epsilon", f"{kind.upper()} models predict noise"
    key = norm_bias_key(ckpt.refs)
    if key is None:
        return "epsilon", "no transformer norm in the last output block to judge by"
    with Reader(ckpt.container) as reader:
        std = float(reader.tensor(ckpt.refs[key]).float().std(unbiased=False))
    found = "v_prediction" if std > V_STD_THRESHOLD else "epsilon"
    return found, f"std {std:.3f} of {key[len(UNET):]} is {'above' if std > V_STD_THRESHOLD else 'at most'} " \
                  f"{V_STD_THRESHOLD}"


# ---------------------------------------------------------------------------------------------- configs
def shipped_config(name: str) -> dict:
    """One family's facts from hypernet/assets/configs/<name>.json."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _heads(kind: str, channels: List[int], base: dict, path) -> object:
    """diffusers' attention_head_dim (heads, in its legacy naming): SD1 has 8 heads per block, SD2 and SDXL 64
    channels per head."""
    if kind == "sd1":
        return base["attention_head_dim"]
    if any(c % HEAD_CHANNELS for c in channels):
        raise HypernetError(f"--model {path}: UNet widths {channels} are not multiples of {HEAD_CHANNELS}, the head "
                            f"size of {kind.upper()} models; this is not a {kind.upper()} layout")
    return [c // HEAD_CHANNELS for c in channels]


def unet_config(shapes, kind: str, base: dict, path="", pooled: int = 0) -> dict:
    """The diffusers UNet2DConditionModel config of the ldm/sgm UNet these shapes describe, over `base`."""
    levels: List[List[Tuple[int, int]]] = [[]]
    for i in _indices(shapes, UNET + "input_blocks.")[1:]:
        block = f"{UNET}input_blocks.{i}."
        if block + "0.op.weight" in shapes:   # a downsampler ends a level
            levels.append([])
            continue
        depth = len(_indices(shapes, block + "1.transformer_blocks."))
        levels[-1].append((shapes[block + "0.out_layers.3.weight"][0], depth))
    per_level = {len(level) for level in levels}
    depths = [{d for _, d in level} for level in levels]
    if len(per_level) != 1 or any(len(d) != 1 for d in depths):
        raise HypernetError(f"--model {path}: its UNet's levels differ in block count or depth; not an SD layout")
    channels = [level[0][0] for level in levels]
    level_depth = [d.pop() for d in depths]
    attention = [k for k in shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight")]
    proj_in = [k for k in shapes if k.startswith(UNET) and k.endswith(".proj_in.weight")]
    if not attention or not proj_in:
        raise HypernetError(f"--model {path}: its UNet has no cross-attention; not a text-to-image SD model")
    layers = [d or 1 for d in level_depth]   # diffusers counts 1 where a level has no attention
    mid_depth = len(_indices(shapes, UNET + "middle_block.1.transformer_blocks."))
    if mid_depth != layers[-1]:         # diffusers' middle block takes the last level's depth
        raise HypernetError(f"--model {path}: its middle block has {mid_depth} transformer layers, its last level "
                            f"{layers[-1]}; diffusers cannot hold that UNet")
    cfg = dict(base)
    cfg.update(
        in_channels=shapes[UNET + "input_blocks.0.0.weight"][1], out_channels=shapes[UNET + "out.2.weight"][0],
        block_out_channels=channels, layers_per_block=per_level.pop(),
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in level_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(level_depth)],
        cross_attention_dim=shapes[attention[0]][1], use_linear_projection=len(shapes[proj_in[0]]) == 2,
        attention_head_dim=_heads(kind, channels, base, path),
        transformer_layers_per_block=layers if len(set(layers)) > 1 else layers[0])
    if kind == "sdxl":
        adm_in = shapes[UNET + "label_emb.0.0.weight"][1]
        cfg.update(projection_class_embeddings_input_dim=adm_in, addition_time_embed_dim=(adm_in - pooled) // 6)
    return cfg


def vae_config(shapes, base: dict) -> dict:
    """The diffusers AutoencoderKL config of the ldm VAE these shapes describe, over `base`."""
    levels = _indices(shapes, VAE + "encoder.down.")
    cfg = dict(base)
    cfg.update(in_channels=shapes[VAE + "encoder.conv_in.weight"][1],
               out_channels=shapes[VAE + "decoder.conv_out.weight"][0],
               latent_channels=shapes[VAE + "decoder.conv_in.weight"][1],
               block_out_channels=[shapes[f"{VAE}encoder.down.{i}.block.0.conv2.weight"][0] for i in levels],
               layers_per_block=len(_indices(shapes, VAE + "encoder.down.0.block.")),
               down_block_types=["DownEncoderBlock2D"] * len(levels), up_block_types=["UpDecoderBlock2D"] * len(levels))
    return cfg


def _clip_prefix(shapes, prefix: str) -> str:
    """Where a transformers-layout CLIP's weights start (older files lack the text_model. level)."""
    return prefix + "text_model." if _has(shapes, prefix + "text_model.") else prefix


def text_config(shapes, prefix: str, layout: str, base: dict, penultimate: bool = False,
                projection: bool = False) -> dict:
    """The CLIPTextConfig fields of the text encoder under `prefix`, over `base`; `penultimate`: the model stops a
    layer early (SD2 conditions on the penultimate layer, so its diffusers text encoder has one layer fewer);
    `projection`: the model keeps the tower's text projection (SDXL's second encoder: its pooled output)."""
    if layout == "clip":
        p = _clip_prefix(shapes, prefix)
        vocab, hidden = shapes[p + "embeddings.token_embedding.weight"]
        positions = shapes[p + "embeddings.position_embedding.weight"][0]
        layers = len(_indices(shapes, p + "encoder.layers."))
        inner = shapes[p + "encoder.layers.0.mlp.fc1.weight"][0]
    else:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = len(_indices(shapes, prefix + "transformer.resblocks."))
        inner = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
    cfg = dict(base)
    cfg.update(vocab_size=vocab, hidden_size=hidden, max_position_embeddings=positions, intermediate_size=inner,
               num_hidden_layers=layers - 1 if penultimate else layers,
               num_attention_heads=max(1, hidden // HEAD_CHANNELS))
    if projection:
        cfg["projection_dim"] = shapes[prefix + "text_projection"][1]
    return cfg


# ---------------------------------------------------------------------------------------------- building models
def _on_meta(make):
    """A module built on the meta device: no memory, no random init; its weights come from the file."""
    with torch.device("meta"):
        return make()


def _finish(module, state: dict, what: str, path):
    """Load `state` into a meta-built module by assignment, cast nothing, and check nothing stayed unloaded."""
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise HypernetError(f"--model {path}: {what} weights {sorted(unexpected)[:3]} fit no layer of the layout "
                            "read from its shapes; an unsupported variant")
    for name, buf in module.named_buffers():
        if buf.is_meta and name.endswith("position_ids"):   # CLIP's non-persistent arange buffer
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if missing or left:
        raise HypernetError(f"--model {path}: the {what} lacks weights the layout needs "
                            f"({', '.join((missing or left)[:3])}...); the file is damaged or an unknown variant")
    return module.eval().requires_grad_(False)


def _unet(ckpt, kind, cfg, dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    state = convert_ldm_unet_checkpoint(ckpt.read(UNET, dtype), cfg)
    return _finish(_on_meta(lambda: UNet2DConditionModel.from_config(cfg)), state, "UNet", ckpt.path)


def _vae(ckpt, cfg, dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    state = convert_ldm_vae_checkpoint(ckpt.read(VAE, dtype), cfg)
    return _finish(_on_meta(lambda: AutoencoderKL.from_config(cfg)), state, "VAE", ckpt.path)


def _text_encoder(ckpt, prefix, layout, cfg, projection: bool, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type") and not k.startswith("_")}
    model = _on_meta(lambda: cls(CLIPTextConfig(**fields)))
    part = ckpt.read(prefix, dtype)
    if layout == "clip":
        start = _clip_prefix(ckpt.refs, prefix)
        state = {"text_model." + k[len(start):]: v for k, v in part.items()}
    else:
        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
        state = convert_open_clip_checkpoint(model, part, prefix=prefix)
    wanted = set(model.state_dict())
    state = {_model_key(k, wanted): v for k, v in state.items()}
    # dropped on purpose: SD2's last layer (it conditions on the one before), logit_scale, an unused projection
    return _finish(model, {k: v for k, v in state.items() if k in wanted}, f"text encoder ({prefix})", ckpt.path)


def _model_key(key: str, wanted) -> str:
    """`key` as the model names it: transformers 5 dropped CLIPTextModel's text_model. level (not that of
    CLIPTextModelWithProjection), and files keep the old names."""
    if key in wanted:
        return key
    bare = key[len("text_model."):] if key.startswith("text_model.") else "text_model." + key
    return bare if bare in wanted else key


def _scheduler(facts: dict, prediction: str):
    import diffusers
    cls = getattr(diffusers, facts["_class_name"])
    return cls.from_config({**facts, "prediction_type": prediction})


# ---------------------------------------------------------------------------------------------- the pipeline
def plan(ckpt: Checkpoint, kind: str = "auto", prediction_type: str = "auto") -> dict:
    """What would load, without reading model weights: kind, prediction type (and why), and every config."""
    if kind not in KINDS:
        raise HypernetError(f"--model-kind {kind}: choose one of {', '.join(KINDS)}")
    if prediction_type not in PREDICTIONS:
        raise HypernetError(f"--prediction-type {prediction_type}: choose auto, epsilon or v")
    shapes = ckpt.shapes
    found = detect_kind(shapes, ckpt.path)
    if kind not in ("auto", found):
        raise HypernetError(f"--model-kind {kind}: the weights of {ckpt.path} are laid out as {found.upper()} "
                            f"(see --model-kind auto)")
    if PREDICTIONS[prediction_type]:
        prediction, why = PREDICTIONS[prediction_type], f"--prediction-type {prediction_type}"
    else:
        prediction, why = detect_prediction(ckpt, found)
    name = "sd2-base" if found == "sd2" and prediction == "epsilon" else found
    facts = shipped_config(name)
    texts = []
    for component, prefix, layout in TEXT_ENCODERS[found]:
        cfg = text_config(shapes, prefix, layout, facts[component], penultimate=found == "sd2",
                          projection=component == "text_encoder_2")
        texts.append((component, prefix, layout, cfg))
    pooled = texts[-1][3]["projection_dim"]
    return {"kind": found, "config": name, "prediction_type": prediction, "why": why, "facts": facts,
            "unet": unet_config(shapes, found, facts["unet"], ckpt.path, pooled=pooled),
            "vae": vae_config(shapes, facts["vae"]), "text_encoders": texts}


def load_single_file(path, *, dtype=torch.float32, kind: str = "auto", prediction_type: str = "auto"):
    """A StableDiffusion(XL)Pipeline from one .safetensors / .ckpt file in the ldm / sgm layout, offline."""
    ckpt = open_checkpoint(path)
    try:
        return _assemble(ckpt, plan(ckpt, kind, prediction_type), dtype)
    except KeyError as exc:  # a key every file of the detected layout has is absent
        raise HypernetError(f"--model {path}: lacks the weight {exc.args[0]!r} its layout needs; the file is "
                            "damaged or not a Stable Diffusion checkpoint") from None


def _assemble(ckpt: Checkpoint, p: dict, dtype):
    """Build each part from the file (one read per part) and the pipeline around them."""
    import diffusers
    path, facts = ckpt.path, p["facts"]
    parts = {"unet": _unet(ckpt, p["kind"], p["unet"], dtype), "vae": _vae(ckpt, p["vae"], dtype)}
    for component, prefix, layout, cfg in p["text_encoders"]:
        tok_name = component.replace("text_encoder", "tokenizer")
        parts[tok_name] = clip_tokenizer(facts[tok_name])
        if len(parts[tok_name]) != cfg["vocab_size"]:
            raise HypernetError(f"--model {path}: its text encoder knows {cfg['vocab_size']} tokens, CLIP's "
                                f"tokenizer {len(parts[tok_name])}; a custom tokenizer is not supported")
        parts[component] = _text_encoder(ckpt, prefix, layout, cfg, component == "text_encoder_2", dtype)
    parts["scheduler"] = _scheduler(facts["scheduler"], p["prediction_type"])
    if p["kind"] == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(**parts, add_watermarker=False,
                                                   force_zeros_for_empty_prompt=facts["force_zeros_for_empty_prompt"])
    else:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=str(path))
    pipe.single_file_plan = {k: p[k] for k in ("kind", "config", "prediction_type", "why")}
    return pipe
