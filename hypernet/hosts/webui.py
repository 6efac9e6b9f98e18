"""The webui host: the webui's loaded model (ldm LatentDiffusion for SD1/SD2, sgm DiffusionEngine for SDXL), and
Forge's (a ForgeDiffusionEngine whose UNet sits in forge_objects.unet.model.diffusion_model).

Only `sample` touches the webui's `modules`, imported inside the function; everything else uses the model object's
own API, so the adapter is testable with a stand-in that has the same methods.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import torch

from ..attach import find_attention
from ..errors import HypernetError

if TYPE_CHECKING:
    from PIL import Image

    from .protocol import Conditioning, Identity


class BlockCheckpointing:
    """Recompute ldm/sgm transformer and res blocks in backward (non-reentrant, so hooks keep their gradients)."""

    def __init__(self, unet: torch.nn.Module, copy_input: bool = False):
        """`copy_input`: for blocks that add into their input in place (Forge's), whose recompute in backward
        needs that input as it was."""
        self.blocks = [m for m in unet.modules()
                       if type(m).__name__ in ("BasicTransformerBlock", "ResBlock") and hasattr(m, "_forward")]
        self.copy_input = copy_input

    def enable(self) -> None:
        from torch.utils.checkpoint import checkpoint
        def checkpointed(inner):
            return lambda *args, **kwargs: checkpoint(inner, *args, use_reentrant=False, **kwargs)

        for block in self.blocks:
            block.forward = checkpointed(_on_a_copy(block._forward) if self.copy_input else block._forward)

    def disable(self) -> None:
        for block in self.blocks:
            block.__dict__.pop("forward", None)


def _on_a_copy(forward: Callable) -> Callable:
    """`forward` run on a copy of its first argument, leaving the caller's tensor untouched."""
    return lambda x, *args, **kwargs: forward(x.clone(), *args, **kwargs)


class WebuiHost:
    """Trainer-facing adapter for the webui's `shared.sd_model`."""

    adds_in_place = False  # ldm and sgm blocks compute residuals out of place
    # Conditioning goes through the webui's own model, which reads the webui's "Clip skip" setting
    # (opts.CLIP_stop_at_last_layers) every time, so 0 follows that setting; N > 0 sets it to N while the trainer
    # encodes a prompt or samples a preview, and puts the user's value back at once.
    clip_skip = 0

    def __init__(self, sd_model, device=None, sampler: Optional[Callable] = None):
        self.sd_model = sd_model
        self._read_model(sd_model)
        first = next(self.unet.parameters())
        # The webui's device, not where the UNet sits now: --medvram keeps it on the CPU between uses.
        self.device = torch.device(device or self._default_device(first))
        self.dtype = self.compute_dtype or unet_dtype(self.unet)
        self._sampler = sampler
        self._checkpointing = BlockCheckpointing(self.unet, copy_input=self.adds_in_place)

    def _read_model(self, sd_model) -> None:
        """UNet, VAE, noise schedule and latent scaling of an ldm LatentDiffusion / sgm DiffusionEngine."""
        if forge_kmodel(sd_model) is not None:
            raise TypeError("a Forge model: use make_host(), which picks ForgeHost")
        self.unet = sd_model.model.diffusion_model
        self.vae = sd_model.first_stage_model
        self.is_sdxl = hasattr(sd_model, "conditioner")
        self.compute_dtype = None  # the UNet's own dtype
        self.alphas_cumprod = torch.as_tensor(sd_model.alphas_cumprod).detach().float().cpu()
        self.prediction_type = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        self.scale_factor = float(getattr(sd_model, "scale_factor", 0.18215))
        self.shift_factor = 0.0

    def _default_device(self, first: torch.Tensor) -> torch.device:
        return _webui("device") or first.device

    def frozen_modules(self) -> List[torch.nn.Module]:
        return [self.sd_model]

    def _vae_placed(self):
        """The VAE on the training device while it encodes (--medvram parks it on the CPU between uses)."""
        return on_device(self.vae, self.device)

    def precision(self):
        """The webui's own precision context, which its sampling runs in: autocast for FP8 weights (which compute
        only inside it) and for half models on CUDA; nothing outside a webui."""
        devices = _webui_module("devices")
        return devices.autocast() if devices is not None else contextlib.nullcontext()

    def check_trainable(self) -> None:
        """Refuse, before any step, a model the webui splits across devices block by block (--lowvram on a GPU):
        backward needs every block where its forward ran."""
        if self.device.type != "cpu" and _lowvram_blocks(self.unet):
            raise HypernetError("training needs the whole UNet on the GPU, and --lowvram keeps one block there at a "
                                "time; restart the webui with --medvram instead (tags still apply with --lowvram)")

    def model_dims(self) -> List[int]:
        sites = find_attention(self.unet)
        cross = sorted({s.width for s in sites if s.cross})
        return cross + sorted({s.width for s in sites if not s.cross} - set(cross))

    def identity(self) -> Identity:
        info = getattr(self.sd_model, "sd_checkpoint_info", None)
        kind = "sdxl" if self.is_sdxl else ("sd2" if 1024 in self.model_dims() else "sd1")
        return {"host": "webui", "kind": kind, "name": getattr(info, "model_name", None) or kind,
                "path": getattr(info, "filename", None), "prediction_type": self.prediction_type,
                "unet_hash": getattr(info, "shorthash", None) or self._fingerprint(self.unet)[:10]}

    @staticmethod
    def _fingerprint(module) -> str:
        digest = hashlib.sha256()
        with torch.no_grad():
            for name, p in list(module.named_parameters())[:6]:
                digest.update(name.encode() + repr(tuple(p.shape)).encode() + repr(float(p.double().sum())).encode())
        return digest.hexdigest()

    @property
    def vae_key(self) -> str:
        return self._fingerprint(self.vae)[:16]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the latent Gaussian, shifted then scaled; the same encoder + quant_conv path in ldm, sgm
        and Forge (whose VAE adds the shift)."""
        with self._vae_placed():
            param = next(self.vae.parameters())
            moments = self.vae.encoder(pixels.to(param.device, param.dtype))
            if getattr(self.vae, "quant_conv", None) is not None:
                moments = self.vae.quant_conv(moments)
        mean, logvar = moments.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean - self.shift_factor) * self.scale_factor, std * self.scale_factor

    @contextlib.contextmanager
    def _clip_setting(self):
        """The webui's Clip skip setting at self.clip_skip for the duration, when that is not 0."""
        if not self.clip_skip:
            yield
            return
        from modules import shared  # lazy: only inside a running webui
        before = shared.opts.CLIP_stop_at_last_layers
        shared.opts.CLIP_stop_at_last_layers = int(self.clip_skip)
        try:
            yield
        finally:
            shared.opts.CLIP_stop_at_last_layers = before

    @contextlib.contextmanager
    def _emphasis_without_mean(self):
        """The webui's "Original" emphasis as "No norm" for the duration: the same multipliers without the
        z * (mean before / mean after) rescale, which is 0/0 = NaN for the whole batch when z.mean() rounds to
        exactly 0 (a text encoder whose final layer norm has no bias: per-token means are ~1e-8)."""
        from modules import shared  # lazy: only inside a running webui
        before = getattr(shared.opts, "emphasis", None)
        if before != "Original":
            yield
            return
        shared.opts.emphasis = "No norm"
        try:
            yield
        finally:
            shared.opts.emphasis = before

    @torch.no_grad()
    def encode_prompts(self, texts: Sequence[str]) -> Conditioning:
        # Forge encodes under torch.inference_mode; clones are ordinary tensors autograd may save.
        with self._clip_setting(), self.precision():
            cond = self.sd_model.get_learned_conditioning(list(texts))
            if not _finite(cond):
                # Without emphasis in the prompts, "No norm" gives exactly what "Original" gives when it is finite.
                with self._emphasis_without_mean():
                    cond = self.sd_model.get_learned_conditioning(list(texts))
        if isinstance(cond, dict):
            return {k: v.clone().to(self.device) for k, v in cond.items()}
        return cond.clone().to(self.device)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # The webui's apply_model casts x, t and a dict's tensors to the UNet's dtype, but not a plain tensor (SD1/2
        # conditioning, float32 after the emphasis multipliers): cast everything here, as its sampler's inputs are.
        with self.precision():
            return self.sd_model.apply_model(x_t.to(self.device, self.dtype), t.to(self.device),
                                             _cast(cond, self.dtype))

    def enable_gradient_checkpointing(self) -> None:
        self._checkpointing.enable()

    def disable_gradient_checkpointing(self) -> None:
        self._checkpointing.disable()

    def sample(self, prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
               seed: int = 0, width: int = 512, height: int = 512, sampler_name: Optional[str] = None) -> Image.Image:
        """A preview through the webui's own txt2img (extra networks off; the trainer's hooks stay on)."""
        with self._clip_setting():
            return self._sample(prompt, negative_prompt, steps, cfg_scale, seed, width, height, sampler_name)

    def _sample(self, prompt, negative_prompt, steps, cfg_scale, seed, width, height, sampler_name):
        if self._sampler is not None:
            return self._sampler(prompt, negative_prompt, steps, cfg_scale, seed, width, height)
        from modules import processing  # lazy: only inside a running webui
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=self.sd_model, prompt=prompt, negative_prompt=negative_prompt, steps=int(steps),
            cfg_scale=float(cfg_scale), seed=int(seed), width=int(width), height=int(height),
            do_not_save_grid=True, do_not_save_samples=True, do_not_reload_embeddings=True)
        if sampler_name:
            p.sampler_name = sampler_name
        p.disable_extra_networks = True
        try:
            return processing.process_images(p).images[0]
        finally:
            p.close()


FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def unet_dtype(unet: torch.nn.Module) -> torch.dtype:
    """The dtype the webui feeds a UNet: ldm/sgm's own `dtype` (float16 when it runs half), else its weights'; FP8
    weights compute in float16, as the webui halves a model before storing it in FP8."""
    own = getattr(unet, "dtype", None)
    dtype = own if isinstance(own, torch.dtype) else next(unet.parameters()).dtype
    return torch.float16 if dtype in FP8_DTYPES else dtype


def _cast(cond, dtype: torch.dtype):
    """Conditioning (a tensor, or SDXL's dict of tensors) in `dtype`."""
    if isinstance(cond, dict):
        return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return cond.to(dtype)


def _webui_module(name: str):
    """The webui's `modules.<name>`, or None outside a webui."""
    import importlib
    try:
        return importlib.import_module(f"modules.{name}")
    except ImportError:
        return None


def _webui(name: str):
    """An attribute of the webui's `modules.devices` (device, dtype_unet...), or None outside a webui."""
    return getattr(_webui_module("devices"), name, None)


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: torch.device):
    """`module` on `device` for the duration, then back where it was (--medvram parks the VAE on the CPU)."""
    before = next(module.parameters()).device
    if before == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(before)


def _lowvram_blocks(unet: torch.nn.Module) -> bool:
    """Whether the webui's --lowvram hooks move the UNet's blocks to the GPU one at a time."""
    blocks = list(getattr(unet, "input_blocks", None) or [])[:1]
    return any(getattr(hook, "__name__", "") == "send_me_to_gpu"
               for block in blocks for hook in block._forward_pre_hooks.values())


def _finite(cond) -> bool:
    tensors = cond.values() if isinstance(cond, dict) else [cond]
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))


def forge_kmodel(sd_model):
    """Forge's KModel (UNet + noise schedule) of a loaded model, or None for an AUTOMATIC1111 model."""
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    return getattr(patcher, "model", None)


def make_host(sd_model, device=None, sampler: Optional[Callable] = None) -> "WebuiHost":
    """The adapter that fits the loaded model: ForgeHost on Forge, WebuiHost on AUTOMATIC1111."""
    if forge_kmodel(sd_model) is not None:
        return ForgeHost(sd_model, device=device, sampler=sampler)
    return WebuiHost(sd_model, device=device, sampler=sampler)


def release_inference_tensors(module: torch.nn.Module) -> int:
    """Replace each inference-mode parameter and buffer of `module` by an ordinary copy; how many were replaced.

    Forge builds its model under torch.inference_mode(), and autograd refuses to save such tensors for backward,
    even frozen ones. One tensor is copied at a time, and the original is freed as soon as it is replaced, so the
    extra memory is at most the largest tensor. Generation works with ordinary tensors exactly as before.
    """
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None or not tensor.is_inference():
                        continue
                    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                        raise HypernetError(f"Forge keeps this model's weights as {type(tensor).__name__} (a "
                                            "quantised storage such as NF4 or GGUF), which training cannot read "
                                            "back; set Forge's 'Diffusion in Low Bits' to Automatic and reload")
                    copy = tensor.clone()
                    table[name] = torch.nn.Parameter(copy, requires_grad=False) \
                        if isinstance(tensor, torch.nn.Parameter) else copy
                    replaced += 1
    return replaced


class ForgeHost(WebuiHost):
    """Trainer-facing adapter for Forge's model (backend/diffusion_engine): same UNet blocks as ldm, a diffusers-
    style VAE with process_in, and a KModel whose predictor holds the noise schedule."""

    adds_in_place = True  # backend/nn/unet.py BasicTransformerBlock: `x += n`

    def _read_model(self, sd_model) -> None:
        objects = sd_model.forge_objects
        self.kmodel = objects.unet.model
        self.unet = self.kmodel.diffusion_model
        self.vae = objects.vae.first_stage_model
        self.is_sdxl = bool(getattr(sd_model, "is_sdxl", False))
        self._load_to_device(objects.unet)
        release_inference_tensors(self.kmodel)  # after the move: the tensors on the training device
        self._copy_hooks: list = []
        # Forge may store weights in fp8/fp16 and compute in another dtype; its Linear layers cast per call.
        self.compute_dtype = getattr(self.kmodel, "computation_dtype", None)
        predictor = self.kmodel.predictor
        self.alphas_cumprod = torch.as_tensor(predictor.alphas_cumprod).detach().float().cpu().clone()
        self.prediction_type = "v" if predictor.prediction_type == "v_prediction" else "epsilon"
        self.scale_factor = float(getattr(self.vae, "scaling_factor", 0.18215))
        self.shift_factor = float(getattr(self.vae, "shift_factor", 0.0) or 0.0)

    @staticmethod
    def _load_to_device(patcher) -> None:
        """Forge keeps models offloaded until used; put the UNet where training will run it."""
        try:
            from backend import memory_management  # lazy: only inside Forge
        except ImportError:
            return
        memory_management.load_model_gpu(patcher)

    def frozen_modules(self) -> List[torch.nn.Module]:
        objects = self.sd_model.forge_objects
        clip = getattr(getattr(objects, "clip", None), "cond_stage_model", None)
        return [m for m in (self.kmodel, self.vae, clip) if isinstance(m, torch.nn.Module)]

    def identity(self) -> Identity:
        return {**super().identity(), "host": "forge"}

    def _default_device(self, first: torch.Tensor) -> torch.device:
        return first.device  # where Forge's memory manager just loaded the UNet

    def precision(self):
        """Forge needs no context: its layers cast their stored weights (fp8, fp16, bf16) to the compute dtype on
        every call."""
        return contextlib.nullcontext()

    def _vae_placed(self):
        """Forge's memory manager decides where its VAE lives; the encoder runs there."""
        return contextlib.nullcontext()

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        context, extra = (cond["crossattn"], {"y": cond["vector"].to(self.dtype)}) if isinstance(cond, dict) \
            else (cond, {})
        if not self._copy_hooks:
            self._copy_hooks = [m.register_forward_pre_hook(_copy_input_for_autograd) for m in self._block_norms()]
        return self.unet(x_t.to(self.device, self.dtype), t.to(self.device).float(),
                         context=context.to(self.dtype), control=None, transformer_options={}, **extra).float()

    def close(self) -> None:
        """Take our hooks off Forge's UNet once training is over."""
        for handle in self._copy_hooks:
            handle.remove()
        self._copy_hooks = []

    def _block_norms(self) -> list:
        """The layer norms of Forge's transformer blocks: its forward then adds into their input in place
        (`x += attn1(norm1(x))`, backend/nn/unet.py), which would change what autograd saved for them."""
        return [getattr(m, name) for m in self.unet.modules() if hasattr(m, "attn1")
                for name in ("norm1", "norm2", "norm3") if isinstance(getattr(m, name, None), torch.nn.Module)]


def _copy_input_for_autograd(module, args):
    """A copy of the first input while autograd records (training, and checkpointing's recompute in backward),
    so the caller's later in-place add cannot change what this module saved; nothing otherwise."""
    if not torch.is_grad_enabled():
        return None
    return (args[0].clone(),) + tuple(args[1:])
