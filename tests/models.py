"""Tiny real UNets for tests: the original ldm UNetModel (webui SD1/SD2) and diffusers UNet2DConditionModel
shaped like SD1, SD2 and SDXL. Everything is built in code with a fixed seed; nothing is downloaded.

Widths (what a hypernetwork keys on):
    ldm            self-attention 32, 64        cross-attention `context_dim` (default 32)
    diffusers sd1  self-attention 32, 64        cross-attention 768
    diffusers sd2  self-attention 32, 64        cross-attention 1024
    diffusers sdxl self-attention 64 only       cross-attention 2048   (first block has no attention, as in SDXL)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

SELF_WIDTHS = {"ldm": [32, 64], "sd1": [32, 64], "sd2": [32, 64], "sdxl": [64]}
CROSS_WIDTH = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
TOKENS = 8  # context length used by unet_inputs (77 in real SD; any length works)


@torch.no_grad()
def _reinit_zeros(model: nn.Module, seed: int) -> nn.Module:
    """ldm zero-initialises its output conv and every transformer proj_out, so a fresh UNet outputs exactly 0 and
    its attention has no effect on the output. Give every layer whose weight is all zeros PyTorch's default init
    instead (seeded), as a trained UNet would have non-zero weights there."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.numel() and not weight.any():
                module.reset_parameters()
    return model


def _cast_time_embed_input(module, args):
    # The webui casts timestep_embedding's float32 output to the UNet's dtype (sd_hijack_unet.py); without it a
    # half/bfloat16 ldm UNet fails in time_embed. A no-op for a float32 UNet.
    weight = module[0].weight
    if args and args[0].dtype != weight.dtype:
        return (args[0].to(weight.dtype),) + tuple(args[1:])
    return None


def tiny_ldm_unet(context_dim: int = 32, *, model_channels: int = 32, channel_mult=(1, 2), num_heads: int = 2,
                  transformer_depth: int = 1, use_linear_in_transformer: bool = False, seed: int = 0,
                  num_classes=None) -> nn.Module:
    """The original ldm.modules.diffusionmodules.openaimodel.UNetModel, tiny (4-channel latent, 8x8 works)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(image_size=8, in_channels=4, model_channels=model_channels, out_channels=4,
                         num_res_blocks=1, attention_resolutions=(1, 2), channel_mult=tuple(channel_mult),
                         num_heads=num_heads, use_spatial_transformer=True, transformer_depth=transformer_depth,
                         context_dim=context_dim, use_checkpoint=False, legacy=False,
                         use_linear_in_transformer=use_linear_in_transformer, num_classes=num_classes)
    _reinit_zeros(unet, seed + 1)
    unet.time_embed.register_forward_pre_hook(_cast_time_embed_input)
    return unet.eval()


def is_ldm(unet: nn.Module) -> bool:
    return type(unet).__module__.startswith("ldm.")


def tiny_diffusers_unet(kind: str = "sd1", *, seed: int = 0) -> nn.Module:
    """diffusers UNet2DConditionModel with tiny blocks; kind is 'sd1', 'sd2' or 'sdxl'."""
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  norm_num_groups=8)
    if kind == "sd1":
        config = dict(common, cross_attention_dim=768, attention_head_dim=8,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    elif kind == "sd2":
        config = dict(common, cross_attention_dim=1024, attention_head_dim=[2, 4], use_linear_projection=True,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    elif kind == "sdxl":
        config = dict(common, cross_attention_dim=2048, attention_head_dim=[2, 4], use_linear_projection=True,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=[1, 2],
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      # text_embeds (pooled, 32 wide here; 1280 in SDXL) + 6 time ids * addition_time_embed_dim
                      projection_class_embeddings_input_dim=32 + 6 * 8)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
    return unet.eval()


def tiny_unet(kind: str, *, seed: int = 0, **kwargs) -> nn.Module:
    """'ldm' or one of the diffusers kinds."""
    if kind == "ldm":
        return tiny_ldm_unet(seed=seed, **kwargs)
    return tiny_diffusers_unet(kind, seed=seed, **kwargs)


def cross_width(unet: nn.Module) -> int:
    if is_ldm(unet):
        for module in unet.modules():
            if type(module).__name__ == "BasicTransformerBlock":
                return module.attn2.to_k.weight.shape[1]
        raise ValueError("ldm UNet without transformer blocks")
    return int(unet.config.cross_attention_dim)


def unet_dtype(unet: nn.Module) -> torch.dtype:
    return next(unet.parameters()).dtype


def set_dtype(unet: nn.Module, dtype: torch.dtype) -> nn.Module:
    """unet.to(dtype); for ldm also its own `dtype` attribute (its forward casts the latent to it), with the
    GroupNorms kept in float32 as ldm's convert_to_fp16 keeps them: ldm's GroupNorm32 upcasts its input to float32,
    which CPU group_norm refuses with half/bfloat16 weights (a float32 norm takes a half input on CPU)."""
    unet.to(dtype)
    if is_ldm(unet):
        unet.dtype = dtype
        for module in unet.modules():
            if isinstance(module, nn.GroupNorm):
                module.float()
    return unet


def unet_inputs(unet: nn.Module, batch: int = 2, seed: int = 0, *, size: int = 8, tokens: int = TOKENS,
                dtype: Optional[torch.dtype] = None) -> dict:
    """Keyword arguments for one forward of `unet`: `call_unet(unet, **unet_inputs(unet))`.

    diffusers: sample, timestep, encoder_hidden_states (+ added_cond_kwargs for SDXL).
    ldm: x, timesteps, context (the arguments of UNetModel.forward).
    Tensors are in the UNet's dtype unless `dtype` says otherwise.
    """
    dtype = dtype or unet_dtype(unet)
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size, size, generator=gen).to(dtype)
    timestep = torch.randint(0, 1000, (batch,), generator=gen)
    context = torch.randn(batch, tokens, cross_width(unet), generator=gen).to(dtype)
    if is_ldm(unet):
        return {"x": sample, "timesteps": timestep, "context": context}
    kwargs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=gen).to(dtype),
            "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch).to(dtype),
        }
    return kwargs


def call_unet(unet: nn.Module, **inputs) -> torch.Tensor:
    """One forward, returning the predicted noise tensor for either kind of UNet."""
    if is_ldm(unet):
        return unet(inputs["x"], timesteps=inputs["timesteps"], context=inputs["context"])
    return unet(**inputs, return_dict=False)[0]


def forward(unet: nn.Module, batch: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
    """call_unet(unet, **unet_inputs(unet, batch, seed, **kwargs))"""
    return call_unet(unet, **unet_inputs(unet, batch, seed, **kwargs))


def _forge_block_forward(block):
    """ldm's BasicTransformerBlock computed the way Forge's is: residual adds in place (`x += n`)."""
    def forward(x, context=None):
        n = block.attn1(block.norm1(x), context=context if block.disable_self_attn else None)
        x += n
        n = block.attn2(block.norm2(x), context=context)
        x += n
        skip = x
        x = block.ff(block.norm3(x))
        x += skip
        return x
    return forward


def as_inference_tensors(module: nn.Module) -> nn.Module:
    """Make every parameter and buffer of `module` an inference tensor, as if it had been built under
    torch.inference_mode() (what Forge does with every model it loads)."""
    with torch.inference_mode():
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = b.clone()
    assert all(t.is_inference() for t in module.state_dict().values())
    return module


class StandInForge:
    """The shape of Forge's loaded model (backend/diffusion_engine/sd15.py, base.py, modules/k_model.py,
    k_prediction.py at commit 08637651): not an nn.Module; forge_objects.unet is a UnetPatcher whose .model is a KModel
    holding .diffusion_model (Forge's port of ldm's UNet, so ldm's class stands in), .predictor (alphas_cumprod,
    prediction_type) and .computation_dtype; forge_objects.vae.first_stage_model is an AutoencoderKL with encoder,
    quant_conv, scaling_factor and shift_factor; get_learned_conditioning runs under torch.inference_mode.

    As in Forge (backend/loader.py forge_loader and sd_models.forge_model_reload run under torch.inference_mode),
    every weight and buffer of the given modules becomes an inference tensor, in place; and the UNet's transformer
    blocks add into their input in place, as Forge's backend/nn/unet.py BasicTransformerBlock does."""

    def __init__(self, unet: nn.Module, prediction_type: str = "epsilon", text_encoder=None, tokenizer=None,
                 storage: Optional[torch.dtype] = None, compute: torch.dtype = torch.float32):
        """`storage`: the UNet's weights stored in that dtype and computed in `compute` (forge_storage)."""
        from types import SimpleNamespace
        if storage is not None:
            forge_storage(unet, storage, compute)
        for module in (unet, text_encoder):
            if module is not None:
                as_inference_tensors(module)
        for block in unet.modules():
            if type(block).__name__ == "BasicTransformerBlock":
                block._forward = _forge_block_forward(block)
        kmodel = nn.Module()
        kmodel.diffusion_model = unet
        kmodel.predictor = nn.Module()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        kmodel.predictor.register_buffer("alphas_cumprod", (1 - betas).cumprod(0).float())
        kmodel.predictor.prediction_type = prediction_type
        kmodel.computation_dtype = compute
        vae = None
        if text_encoder is not None:
            from ldm.modules.diffusionmodules.model import Encoder
            vae = nn.Module()
            vae.encoder = Encoder(ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(),
                                  in_channels=3, resolution=64, z_channels=4, double_z=True)
            vae.quant_conv = nn.Conv2d(8, 8, 1)
            vae.scaling_factor, vae.shift_factor = 0.18215, 0.0
            as_inference_tensors(vae)
        as_inference_tensors(kmodel.predictor)
        self.forge_objects = SimpleNamespace(
            unet=SimpleNamespace(model=kmodel), vae=SimpleNamespace(first_stage_model=vae),
            clip=SimpleNamespace(cond_stage_model=text_encoder))
        self.tokenizer = tokenizer
        self.is_sd1, self.is_sdxl = True, False

    @torch.inference_mode()
    def get_learned_conditioning(self, texts):
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return self.forge_objects.clip.cond_stage_model(ids.input_ids)[0]


class StandInLatentDiffusion(nn.Module):
    """The parts of ldm's LatentDiffusion the webui host uses, built from real ldm modules (the real class needs
    pytorch_lightning and torchvision, which the webui has and CI does not).

    `devices` is the webui's modules.devices (the stand-in one in webui_stub, configured for a start mode); without
    it the model runs as the webui's full precision does. As in the webui (modules/sd_hijack_unet.py apply_model),
    apply_model runs inside devices.autocast() and casts x, t and a *dict* conditioning to devices.dtype_unet, never a
    plain tensor; get_learned_conditioning returns float32, the text encoder's output times the emphasis
    multipliers (modules/sd_hijack_clip.py). With `sdxl`, it has the shape of the webui's SDXL model (sgm's
    DiffusionEngine): a `conditioner`, a dict conditioning {"crossattn", "vector"}, the vector added to the timestep
    embedding (here by ldm's "continuous" label embedding, one value wide)."""

    def __init__(self, parameterization="eps", devices=None, sdxl=False):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Encoder
        from ldm.modules.diffusionmodules.util import make_beta_schedule

        from hypernet.tiny import model as tiny
        self.model = nn.Module()
        self.model.diffusion_model = tiny_ldm_unet(context_dim=32, num_classes="continuous" if sdxl else None)
        self.first_stage_model = nn.Module()
        self.first_stage_model.encoder = Encoder(ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                                                 attn_resolutions=(), in_channels=3, resolution=64, z_channels=4,
                                                 double_z=True)
        self.first_stage_model.quant_conv = nn.Conv2d(8, 8, 1)
        self.cond_stage_model = tiny.pipeline("sd1", seed=3).text_encoder
        self.tokenizer = tiny.tokenizer()
        betas = make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012)
        self.register_buffer("alphas_cumprod", torch.tensor(betas).neg().add(1).cumprod(0).float())
        self.parameterization = parameterization
        self.scale_factor = 0.18215
        self.devices = devices
        if sdxl:
            self.conditioner = nn.Module()   # what the webui host recognises SDXL by

    def _autocast(self):
        import contextlib
        return self.devices.autocast() if self.devices is not None else contextlib.nullcontext()

    def get_learned_conditioning(self, texts):
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        z = self.cond_stage_model(ids.input_ids)[0]
        z = z * torch.ones(z.shape[:2] + (1,), dtype=torch.float32)   # the emphasis multipliers: float32
        if hasattr(self, "conditioner"):
            return {"crossattn": z, "vector": z.float().mean(dim=(1, 2)).unsqueeze(1)}
        return z

    def apply_model(self, x, t, cond):
        dtype = self.devices.dtype_unet if self.devices is not None else torch.float32
        if isinstance(cond, dict):
            cond = {k: v.to(dtype) for k, v in cond.items()}
        extra = {"context": cond["crossattn"], "y": cond["vector"]} if isinstance(cond, dict) else {"context": cond}
        with self._autocast():
            return self.model.diffusion_model(x.to(dtype), t.to(dtype), **extra)


def sdp_attention(unet: nn.Module, upcast: bool = False) -> None:
    """Every CrossAttention of an ldm UNet computed as the webui (modules/sd_hijack_optimizations.py) and Forge
    (backend/attention.py) compute it, by scaled dot product attention; upcast to float32 with the webui's "Upcast
    cross attention layer to float32". ldm's own forward mixes float32 scores with float16 values: no host runs it
    in a half model."""
    for module in unet.modules():
        if type(module).__name__ == "CrossAttention":
            module.forward = _sdp_forward(module, upcast)


def _sdp_forward(attn: nn.Module, upcast: bool):
    import torch.nn.functional as F

    def forward(x, context=None, mask=None):
        context = x if context is None else context
        q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        dtype = q.dtype
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
        b, h = x.shape[0], attn.heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])
        return attn.to_out(out.to(dtype))
    return forward


def webui_precision(model: StandInLatentDiffusion, mode: str, upcast_attn: bool = False) -> StandInLatentDiffusion:
    """The model as the webui loads it in a start mode (model.devices must be the stand-in modules.devices):
    "half" (--precision half): UNet, text encoder and VAE in float16, the UNet's own dtype float16, GroupNorm32 on
    float32 weights; "fp8" (Settings > FP8 weight): every Linear and Conv2d but the VAE's stored as float8_e4m3fn,
    usable only inside the webui's autocast; "full": as built. Attention runs the webui's way, upcast to float32 when
    `upcast_attn` (Settings > Upcast cross attention layer to float32)."""
    sdp_attention(model.model.diffusion_model, upcast_attn)
    model.devices.configure(mode)
    if mode == "half":
        set_dtype(model.model.diffusion_model, torch.float16)
        model.cond_stage_model.half()
        model.first_stage_model.half()
    elif mode == "fp8":
        for part in (model.model, model.cond_stage_model):
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.to(torch.float8_e4m3fn)
    return model


def _forge_forward(module: nn.Module):
    """The layer's forward as Forge's backend/operations.py computes it: its stored weights cast to the input's
    dtype on every call."""
    import torch.nn.functional as F

    def cast(x):
        w = module.weight.to(x.dtype) if module.weight is not None else None
        b = module.bias.to(x.dtype) if module.bias is not None else None
        return w, b

    if isinstance(module, nn.Linear):
        return lambda x: F.linear(x, *cast(x))
    if isinstance(module, nn.Conv2d):
        return lambda x: module._conv_forward(x, *cast(x))
    if isinstance(module, nn.GroupNorm):
        return lambda x: F.group_norm(x, module.num_groups, *cast(x), module.eps)
    return lambda x: F.layer_norm(x, module.normalized_shape, *cast(x), module.eps)


def forge_storage(unet: nn.Module, storage: torch.dtype, compute: torch.dtype) -> nn.Module:
    """The UNet as Forge keeps it with --unet-in-fp16/-bf16/-fp8-e4m3fn: weights stored in `storage`, every layer
    computing in `compute` (its weights cast per call), and the UNet's inputs in `compute`."""
    for module in unet.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)):
            module.to(storage)
            module.forward = _forge_forward(module)
    sdp_attention(unet)
    unet.dtype = compute
    unet.time_embed._forward_pre_hooks.clear()   # the float32 timestep embedding goes in as the compute dtype
    unet.time_embed.register_forward_pre_hook(lambda m, args: (args[0].to(compute),) + tuple(args[1:]))
    return unet
