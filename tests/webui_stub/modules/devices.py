"""modules/devices.py: where and in which dtypes the webui runs its model, and the precision context every model call
of its own runs in (autocast). The rules of v1.10.1's autocast(), in order: --precision half casts nothing; FP8
weights on the CPU compute in bfloat16 autocast; FP8 with float32 inference casts by hand; a float32 model needs
nothing; elsewhere CUDA autocast (float16)."""
import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
fp8 = False
force_fp16 = False
unet_needs_upcast = False


def autocast(disable=False):
    if disable or force_fp16:
        return contextlib.nullcontext()
    if fp8 and device == cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=True)
    if fp8 and dtype_inference == torch.float32:
        raise NotImplementedError("manual_cast is not part of the stand-in")
    if dtype == torch.float32 or dtype_inference == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def configure(mode: str) -> None:
    """Set the dtypes as the webui's shared_init and sd_models do for a start mode: "full" (--no-half --precision
    full), "half" (--precision half), "fp8" (full precision with Settings > FP8 weight: Enable, the mode that runs on
    a CPU)."""
    global dtype, dtype_vae, dtype_unet, dtype_inference, fp8, force_fp16
    half = mode == "half"
    dtype = dtype_vae = dtype_unet = torch.float16 if half else torch.float32
    dtype_inference = dtype
    force_fp16 = half
    fp8 = mode == "fp8"
