"""Adapters between the trainer and one concrete model stack.

A host gives the trainer: `unet` (attention to hook), `encode_images(pixels) -> (mean, std)` of the scaled latent
Gaussian, `encode_prompts(texts) -> conditioning` (a tensor, or a dict for SDXL), `predict(x_t, t, cond)`,
`alphas_cumprod`, `prediction_type` ("epsilon" or "v"), `device` / `dtype`, `frozen_modules()`, `identity()`,
`vae_key`, `model_dims()` and `sample(prompt, ...) -> PIL image` for previews.

The contract itself, member by member, with the optional members the trainer looks up (release, use_vae, clip_skip,
precision, check_trainable, gradient checkpointing, close), is hosts/protocol.py; mypy checks every host and the
tests' stand-ins against it (tests/typing_hosts.py).
"""
