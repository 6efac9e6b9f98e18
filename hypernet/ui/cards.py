"""What a card and the API listing say about one file: cheap facts from its header, and how it fits the model."""
from __future__ import annotations

import os

from ..bounds import read_json
from ..library import Entry
from .state import LibraryState


def card_facts(state: LibraryState, entry: Entry, unet) -> dict:
    """The metadata shown for a file (cheap: header only, cached): shape, training step, base model, fit."""
    try:
        facts = state.describe(entry)
    except Exception as exc:  # an unreadable file still gets a card that says why
        return {"format": entry.format, "size_bytes": entry.size, "error": str(exc), "fits": False,
                "fit_note": f"cannot be read: {exc}"}
    report = state.fit(facts, unet)
    return {
        "format": entry.format,
        "size_bytes": entry.size,
        "dims": facts["dims"],
        "layer_structure": facts["layer_structure"],
        "activation": facts["activation"],
        "layer_norm": facts["layer_norm"],
        "dropout_structure": facts["dropout_structure"],
        "activate_output": facts["activate_output"],
        "weight_init": facts["weight_init"],
        "parameters": facts["parameters"],
        "step": facts["step"],
        "internal_name": facts["name"],
        "base_model": facts["sd_checkpoint_name"],
        "base_model_hash": facts["sd_checkpoint"],
        "made_for": facts["made_for"],
        "fits": None if report is None else report.fits,
        "applies": None if report is None else report.applies,
        "fit_note": "" if report is None else (report.warning or ""),
        "notes": facts["optional_info"] or "",
        "readers": facts["readers"],          # other loaders: None where their math is ours, else why not
        "same_math": facts["same_math"],
    }


def face_warning(facts: dict) -> str:
    """Why a file cannot be used, or not fully, with the loaded model, in words for a card's face ("" when it
    fits, or no model is loaded)."""
    if facts.get("error"):
        return f"cannot be read: {facts['error']}"
    if facts.get("fits") is False:
        return facts.get("fit_note") or "does not fit the loaded model"
    return ""


def user_metadata(path_without_ext: str) -> dict:
    """`<stem>.json`, written by the webui's user metadata editor; {} if absent or unreadable."""
    try:
        data = read_json(path_without_ext + ".json", "user metadata")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # HypernetError is a ValueError: too large, too deep or not JSON
        return {}


def listing(state: LibraryState, entry: Entry, name: str, unet, *, compute_hash: bool = False) -> dict:
    """One API list entry: the card's facts plus file identity."""
    digest = state.sha256(entry, compute=compute_hash)
    return {"name": name, "filename": entry.path, "relpath": entry.relpath, "format": entry.format,
            "size_bytes": entry.size, "shorthash": digest[:10] if digest else "", "sha256": digest or "",
            "description": user_metadata(os.path.splitext(entry.path)[0]).get("description") or "",
            "metadata": card_facts(state, entry, unet)}
