"""The diffusers host: SD1.x, SD2.x (v-prediction) and SDXL pipelines, from an object or a local path."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import HypernetError

if TYPE_CHECKING:
    from PIL import Image

    from .protocol import Conditioning, Identity


class _DropTorchvisionNotice:
    """A logging filter for transformers' "requires torchvision (not installed); falling back to ...Pil" notice:
    diffusers' pipeline modules name CLIPImageProcessor, whose fallback is what we want (no safety checker, no
    image processing), and torchvision would pull in a CUDA build of torch."""

    def filter(self, record) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def quiet_imports() -> None:
    """Install the filter above once, before diffusers is imported; every other message stays."""
    import logging
    log = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionNotice) for f in log.filters):
        log.addFilter(_DropTorchvisionNotice())


def _require_diffusers():
    quiet_imports()
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise HypernetError("the diffusers host needs `pip install diffusers transformers` "
                            "(or `pip install -e .[diffusers]`)") from None


def _from_pretrained_kwargs(dtype) -> dict:
    """dtype and memory keywords this diffusers understands, so that it has nothing to warn about: newer releases
    renamed torch_dtype to dtype, and low_cpu_mem_usage needs accelerate (an optional speed-up here)."""
    import diffusers.utils.deprecation_utils as deprecation
    from diffusers.utils import is_accelerate_available
    renamed = hasattr(deprecation, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype" if renamed else "torch_dtype": dtype, "low_cpu_mem_usage": is_accelerate_available()}


def _set_prediction(pipe, prediction_type: str, path) -> None:
    """Replace a folder pipeline's scheduler by the same one predicting `prediction_type` (auto: keep it)."""
    from .single_file import PREDICTIONS
    if prediction_type not in PREDICTIONS:
        raise HypernetError(f"--prediction-type {prediction_type}: choose auto, epsilon or v")
    wanted = PREDICTIONS[prediction_type]
    if wanted and pipe.scheduler.config.get("prediction_type") != wanted:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=wanted)


def load_pipeline(path, *, dtype=torch.float32, kind: str = "auto", prediction_type: str = "auto"):
    """A diffusers pipeline from a local folder or a single .safetensors/.ckpt file, never from a hub.

    kind ('auto', 'sd1', 'sd2', 'sdxl') and prediction_type ('auto', 'epsilon', 'v') matter for single files,
    whose family and prediction are otherwise read from the weights (hosts/single_file.py); prediction_type also
    overrides a folder's scheduler."""
    _require_diffusers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    path = Path(path)
    if not path.exists():
        raise HypernetError(f"--model {path}: not found; give a diffusers folder (with model_index.json) or a "
                            ".safetensors/.ckpt checkpoint file")
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise HypernetError(f"--model {path}: folder has no model_index.json; it is not a diffusers pipeline")
        try:
            text = index.read_text()
            cls = getattr(diffusers, json.loads(text)["_class_name"])
            extra = {"safety_checker": None} if "safety_checker" in text else {}
            pipe = cls.from_pretrained(str(path), local_files_only=True, **_from_pretrained_kwargs(dtype), **extra)
        except HypernetError:
            raise
        except Exception as exc:
            raise HypernetError(f"--model {path}: cannot load this diffusers folder ({str(exc).splitlines()[0]})") from None
        _set_prediction(pipe, prediction_type, path)
        return pipe
    if path.suffix.lower() not in (".safetensors", ".ckpt"):
        raise HypernetError(f"--model {path}: expected a .safetensors or .ckpt checkpoint, or a diffusers folder")
    from .single_file import load_single_file
    return load_single_file(path, dtype=dtype, kind=kind, prediction_type=prediction_type)


def _fingerprint(model) -> str:
    """A cheap identity for a diffusers model: a hash of its config and a few weight statistics."""
    digest = hashlib.sha256(json.dumps(dict(model.config), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for _, p in list(model.named_parameters())[:4]:
            digest.update(repr(float(p.double().sum())).encode())
    return digest.hexdigest()


def _empty_cache(device: torch.device) -> None:
    """Give memory freed on the device back to it, so the next user (or a peak reading) sees it free."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class DiffusersHost:
    """Trainer-facing adapter for a diffusers StableDiffusion(XL)Pipeline."""

    def __init__(self, pipe, device=None, dtype: Optional[torch.dtype] = None, disposable: bool = False):
        """`disposable`: the pipeline is this run's alone (the CLI's), so release() may drop parts for good on a
        CPU, where there is no other memory to move them to."""
        _require_diffusers()
        self.disposable = disposable
        self._dropped: set = set()
        self._time_ids: dict = {}  # SDXL's size-and-crop tensors by (shape, device, dtype)
        from diffusers import DDPMScheduler
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
        self.text_encoders = [t for t in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if t is not None]
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.device = torch.device(device) if device is not None else self.unet.device
        self.dtype = dtype or self.unet.dtype
        for tok in self.tokenizers:
            if len(tok) < 2:
                raise HypernetError("the pipeline's tokenizer is empty (HF_HUB_OFFLINE with no cached files?); "
                                    "build or ship the tokenizer files with the model")
        train_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.alphas_cumprod = train_sched.alphas_cumprod.to(torch.float32)
        self.prediction_type = "v" if train_sched.config.prediction_type == "v_prediction" else "epsilon"
        self.num_train_timesteps = int(train_sched.config.num_train_timesteps)
        self._clip_skip = 0
        self._read_vae_scaling()
        self.to(self.device, self.dtype)

    def _read_vae_scaling(self) -> None:
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def use_vae(self, vae) -> torch.nn.Module:
        """Encode, decode and sample with another AutoencoderKL (a module, or a path hosts/vae.py reads); returns
        the one it replaces, so the caller can put it back."""
        if not isinstance(vae, torch.nn.Module):
            from .vae import load_vae
            vae = load_vae(vae, like=self.vae)
        previous = self.vae
        self.vae = self.pipe.vae = vae.requires_grad_(False).eval()
        self._read_vae_scaling()
        self.to(self.device)
        return previous

    # Clip skip as the webui and kohya count it: 1 is the last layer, 2 the penultimate (diffusers' clip_skip is
    # one less). SD1/2 take hidden_states[-N] through the final layer norm, as the webui's CLIP_stop_at_last_layers
    # does; SDXL conditions on the penultimate layer already (without that norm), so N <= 2 keeps it and a larger
    # N takes hidden_states[-N] from both encoders.
    @property
    def clip_skip(self) -> int:
        """0 or 1: the text encoder's last layer; N: the N-th layer from the end."""
        return self._clip_skip

    @clip_skip.setter
    def clip_skip(self, value: int) -> None:
        layers = min(int(te.config.num_hidden_layers) for te in self.text_encoders)
        if not 0 <= int(value) <= layers:
            raise HypernetError(f"clip_skip: {value} is more than this text encoder's {layers} layers; use 0 to "
                                f"{layers} (2 is the usual value)")
        self._clip_skip = int(value)

    def _diffusers_clip_skip(self) -> Optional[int]:
        """diffusers' count for the same clip skip (one less, on SDXL two less), None when it skips nothing."""
        extra = self._clip_skip - (2 if self.is_sdxl else 1)
        return extra if extra > 0 else None

    def _embeddings(self, prompt: str, negative_prompt: str) -> dict:
        """Pipeline arguments that condition a preview exactly as training does: the pipeline's own clip_skip
        reads `text_encoder.text_model`, which transformers 5 no longer has, so with clip skip the embeddings are
        ours."""
        if self._diffusers_clip_skip() is None:
            return {"prompt": prompt, "negative_prompt": negative_prompt or None}
        cond, uncond = self.encode_prompts([prompt]), self.encode_prompts([negative_prompt or ""])
        if not self.is_sdxl:
            return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}
        return {"prompt_embeds": cond["context"], "negative_prompt_embeds": uncond["context"],
                "pooled_prompt_embeds": cond["pooled"], "negative_pooled_prompt_embeds": uncond["pooled"]}

    # ------------------------------------------------------------------------------------------ plumbing
    def to(self, device, dtype=None):
        self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        # the VAE and text encoders run under no_grad; fp32 VAE avoids the known fp16 overflow in SD VAEs
        vae_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        for module, wanted in [(self.unet, self.dtype), (self.vae, vae_dtype)] + [(t, self.dtype)
                                                                                 for t in self.text_encoders]:
            param = next(module.parameters())
            if param.device.type == "meta":  # dropped by release(): nothing to move
                continue
            if param.device != self.device or param.dtype != wanted:
                module.to(self.device, wanted)
        return self

    def frozen_modules(self) -> List[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]

    def model_dims(self) -> List[int]:
        """The context widths this model's attention reads (cross first, then self)."""
        from ..attach import find_attention
        sites = find_attention(self.unet)
        cross = sorted({s.width for s in sites if s.cross})
        return cross + sorted({s.width for s in sites if not s.cross} - set(cross))

    def identity(self) -> Identity:
        cfg = self.unet.config
        kind = "sdxl" if self.is_sdxl else ("sd2" if cfg.cross_attention_dim == 1024 else "sd1")
        name = getattr(self.pipe, "name_or_path", None) or getattr(self.pipe.config, "_name_or_path", "") or ""
        return {"host": "diffusers", "kind": kind, "name": os.path.basename(str(name).rstrip("/")) or kind,
                "path": str(name), "prediction_type": self.prediction_type,
                "cross_attention_dim": cfg.cross_attention_dim, "unet_hash": self.unet_fingerprint()}

    def unet_fingerprint(self) -> str:
        return _fingerprint(self.unet)[:10]

    @property
    def vae_key(self) -> str:
        return _fingerprint(self.vae)[:16]

    # ------------------------------------------------------------------------------------------ trainer API
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled latent Gaussian for pixels in [-1, 1]."""
        self._check_kept("vae")
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(pixels.to(self.device, vae_dtype)).latent_dist
        mean = (dist.mean.float() - self.shift_factor) * self.scaling_factor
        return mean, dist.std.float() * self.scaling_factor

    def _tokens(self, tokenizer, texts):
        return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.device)

    def release(self, vae: bool, text: bool) -> Callable[[], None]:
        """Free the VAE and/or text encoders while training does not need them: off the GPU to the CPU, or on a CPU,
        from a disposable pipeline, dropped. Returns what brings them back (dropped parts stay dropped)."""
        chosen = {name: modules for name, modules, wanted in (("vae", [self.vae], vae),
                                                              ("text encoder", list(self.text_encoders), text))
                  if wanted}
        parts = [module for modules in chosen.values() for module in modules]
        if not parts:
            return lambda: None
        if self.device.type != "cpu":
            for module in parts:
                module.to("cpu")
            _empty_cache(self.device)

            def bring_back():
                for module in parts:
                    module.to(self.device)
            return bring_back
        if self.disposable:  # let go for good: weights on the meta device hold no memory
            for module in parts:
                module.to("meta")
            self._dropped.update(chosen)
            import gc
            gc.collect()
        return lambda: None

    def _check_kept(self, name: str) -> None:
        if name in self._dropped:
            raise HypernetError(f"the {name} was freed once training no longer needed it; load the model again "
                                "to use it")

    @torch.no_grad()
    def encode_prompts(self, texts: Sequence[str]) -> Conditioning:
        """Text conditioning: a [B, 77, D] tensor (SD1/2) or a dict with pooled embeddings (SDXL)."""
        self._check_kept("text encoder")
        if not self.is_sdxl:
            te = self.text_encoders[0]
            if self._clip_skip <= 1:
                return te(self._tokens(self.tokenizers[0], texts))[0].to(self.dtype)
            out = te(self._tokens(self.tokenizers[0], texts), output_hidden_states=True)
            norm = getattr(te, "text_model", te).final_layer_norm  # transformers 5 dropped the text_model level
            return norm(out.hidden_states[-self._clip_skip]).to(self.dtype)
        hidden, pooled = [], None
        for tok, te in zip(self.tokenizers, self.text_encoders):
            out = te(self._tokens(tok, texts), output_hidden_states=True)
            hidden.append(out.hidden_states[-max(2, self._clip_skip)])
            pooled = out[0] if out[0].dim() == 2 else pooled
        assert pooled is not None, "SDXL's second text encoder gives pooled embeddings"
        return {"context": torch.cat(hidden, dim=-1).to(self.dtype), "pooled": pooled.to(self.dtype)}

    def _sdxl_time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's size-and-crop numbers for a batch, made once per shape: a tensor built from a list on a GPU is a
        copy the host waits for, every step."""
        key = (tuple(latents.shape[:1] + latents.shape[-2:]), self.device, self.dtype)
        cache = self._time_ids
        if key not in cache:
            h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
            ids = torch.tensor([h, w, 0, 0, h, w], device=self.device, dtype=self.dtype)
            cache[key] = ids.unsqueeze(0).repeat(latents.shape[0], 1)
        return cache[key]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x_t = x_t.to(self.device, self.dtype)
        if not self.is_sdxl:
            return self.unet(x_t, t, encoder_hidden_states=cond).sample
        extra = {"text_embeds": cond["pooled"], "time_ids": self._sdxl_time_ids(x_t)}
        return self.unet(x_t, t, encoder_hidden_states=cond["context"], added_cond_kwargs=extra).sample

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.unet.disable_gradient_checkpointing()

    @torch.no_grad()
    def sample(self, prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
               seed: int = 0, width: int = 512, height: int = 512, sampler_name: Optional[str] = None) -> Image.Image:
        """One preview image as PIL (`sampler_name` is a webui notion; the pipeline's scheduler is used)."""
        self._check_kept("text encoder")
        self._check_kept("vae")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        result = self.pipe(**self._embeddings(prompt, negative_prompt), num_inference_steps=int(steps),
                           guidance_scale=float(cfg_scale), width=int(width), height=int(height),
                           generator=generator, output_type="pil")
        return result.images[0]
