"""The built-in tiny Stable Diffusion model, its training data and the demo; what the tests and the demo run on.

    model.py   tiny pipelines from the real diffusers / transformers classes; load_pipeline() for the shipped one
    build.py   trains the shipped model from scratch (python -m hypernet.tiny build); sample() draws with it
    scenes.py  captioned scenes: one coloured shape at a named position on a plain background
    demo.py    python -m hypernet demo: a style hypernetwork trained and shown on the tiny model

Nothing outside this package and the apps imports it: hosts and training know nothing of the tiny model.
"""
from .build import sample
from .model import ASSETS, CONFIG, WEIGHTS, load_pipeline, pipeline, tokenizer

__all__ = ["ASSETS", "CONFIG", "WEIGHTS", "load_pipeline", "pipeline", "sample", "tokenizer"]
