"""Adapters between the trainer and one concrete model stack.

A host gives the trainer: `unet` (attention to hook), `encode_images(pixels) -> (mean, std)` of the scaled latent
Gaussian, `encode_prompts(texts) -> conditioning` (a tensor, or a dict for SDXL), `predict(x_t, t, cond)`,
`alphas_cumprod`, `prediction_type` ("epsilon" or "v"), `device` / `dtype`, `frozen_modules()`, `identity()`,
`vae_key`, `model_dims()` and `sample(prompt, ...) -> PIL image` for previews.
"""
