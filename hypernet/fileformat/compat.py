"""Which other loaders read a hypernetwork file with the same math as ours, and why not where not.

The rules come from reading those loaders: the webui's built-in one (modules/hypernetworks, behind its
restricted torch.load) and ComfyUI's (comfy_extras/nodes_hypernetwork.py). Each function is pure: it looks at
a file's format and its stored string keys, as those loaders do.
"""
from __future__ import annotations

from typing import Dict, Optional

COMFYUI_ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")
CONVERT = "python -m hypernet convert FILE NEW.pt"


def webui_reason(fmt: str, refusal: Optional[str]) -> Optional[str]:
    """Why the webui's built-in loader (without this extension) would not read the file; None if it would."""
    if fmt == "safetensors":
        return f"the webui's built-in loader reads only .pt files; make a .pt copy with `{CONVERT}`"
    if refusal:
        return f"its restricted loader refuses the file ({refusal}); re-save it with `{CONVERT}`"
    return None


def comfyui_reason(fmt: str, meta: dict) -> Optional[str]:
    """Why ComfyUI's loader would skip the file or compute something else; None when its math is ours."""
    if fmt == "safetensors":
        return f"ComfyUI reads hypernetworks only from .pt files; make a .pt copy with `{CONVERT}`"
    activation = meta.get("activation_func", "linear")
    if activation not in COMFYUI_ACTIVATIONS:
        return (f"ComfyUI loads only the activations {', '.join(COMFYUI_ACTIVATIONS)}; it skips a file with "
                f"{activation!r}")
    if meta.get("use_dropout"):
        return (f"the file says use_dropout, so ComfyUI keeps a p=0.3 dropout on while generating and its images "
                f"flicker; re-save it with `{CONVERT}`, which stores use_dropout: False")
    if activation == "linear":
        return None
    if "activate_output" not in meta:
        return "the file does not say activate_output: ComfyUI assumes False where the webui assumes True"
    if meta.get("is_layer_norm") and not meta.get("activate_output"):
        return ("with layer norm ComfyUI also applies the activation after the output layer; only 'linear' or "
                "activate_output avoids that")
    return None


def readers(fmt: str, meta: dict, webui_refusal: Optional[str]) -> Dict[str, Optional[str]]:
    """{"webui": reason or None, "comfyui": reason or None}: None where that loader computes what we compute."""
    return {"webui": webui_reason(fmt, webui_refusal), "comfyui": comfyui_reason(fmt, meta)}


def summary(found: Dict[str, Optional[str]]) -> str:
    """One line for a card, a status box or `info`: who reads the file identically, and why not the others."""
    names = {"webui": "the webui", "comfyui": "ComfyUI"}
    same = [names[k] for k, reason in found.items() if reason is None]
    lines = [f"same math in {' and '.join(same)}" if same else "no other loader reads it identically"]
    lines += [f"not {names[k]}: {reason}" for k, reason in found.items() if reason is not None]
    return "; ".join(lines)
