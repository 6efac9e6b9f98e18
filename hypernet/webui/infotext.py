"""Pasting an infotext back: legacy "Hypernet:" fields and "Hypernet hashes" resolved against the library.

The webui (v1.10.1) parses the infotext first (modules/infotext_utils.py: parse_generation_parameters, which already
appends `<hypernet:X:Y>` for a legacy "Hypernet: X" field, lines 307-309) and then calls every
on_infotext_pasted(infotext, params) callback (connect_paste, line 487), which may edit params["Prompt"].
So this handler adds the legacy tag only when it is not there yet (Forge and older forks may not add it), and
otherwise only rewrites names: a tag whose file is missing but whose recorded hash matches another file is pointed at
that file (the same thing Lora does for "Lora hashes", extensions-builtin/Lora/scripts/lora_script.py:77-97).
"""
from __future__ import annotations

import re
from typing import Dict, Optional

from ..errors import HypernetError, NotFoundError
from .state import HypernetState, get_state

HASHES_FIELD = "Hypernet hashes"
_TAG_NAME = re.compile(r"<hypernet:([^:>]+)")
_PROMPT_FIELDS = ("Prompt", "Hires prompt")
_NAME_SYMBOLS = str.maketrans("", "", ":,")  # the field separates entries with ',' and names from hashes with ':'


def infotext_name(name: str) -> str:
    """A tag name as written into the "Hypernet hashes" field (as Lora does, without ':' and ',')."""
    return name.translate(_NAME_SYMBOLS).strip()


def parse_hashes(text: str) -> Dict[str, str]:
    """{name: shorthash} from "a: 0123456789, b: abcdef0123" (the infotext quoting is already undone)."""
    out = {}
    for part in str(text).split(","):
        name, sep, short = part.rpartition(":")
        name, short = name.strip(), short.strip().lower()
        if sep and name and re.fullmatch(r"[0-9a-f]{6,64}", short):
            out[name] = short
    return out


def _exists(state: HypernetState, name: str) -> bool:
    try:
        state.resolve(name)
        return True
    except NotFoundError as exc:
        return "ambiguous" in str(exc)  # several files carry the name: it exists, the tag needs a path


def _renamed(state: HypernetState, name: str, short: Optional[str]) -> Optional[str]:
    """The name to write instead of `name` when its file is gone but one with the hash `short` exists."""
    if not short or _exists(state, name):
        return None
    entry = state.find_by_hash(short)
    return state.card_name(entry) if entry is not None else None


def on_infotext_pasted(infotext: str, params: dict) -> None:
    state = get_state()
    try:
        _legacy_fields(state, params)
        hashes = params.get(HASHES_FIELD)
        if hashes:
            _rewrite_by_hash(state, params, parse_hashes(hashes))
    except (HypernetError, OSError) as exc:  # a broken folder must not break pasting
        from . import messages
        messages.log.warning("hypernet: infotext paste: %s", exc)


def _legacy_fields(state: HypernetState, params: dict) -> None:
    """"Hypernet: X" (+ "Hypernet strength: Y", default "1.0"; "Hypernet hash" before 2023) -> <hypernet:X:Y>."""
    name = params.get("Hypernet")
    if not name:
        return
    name = str(name).strip()
    strength = str(params.get("Hypernet strength", "1.0")).strip() or "1.0"
    prompt = str(params.get("Prompt", ""))
    target = _renamed(state, name, params.get("Hypernet hash")) or name
    written = f"<hypernet:{name}:"
    if written in prompt:  # the webui added it already
        if target != name:
            prompt = prompt.replace(written, f"<hypernet:{target}:")
    elif f"<hypernet:{target}:" not in prompt:
        prompt += f"<hypernet:{target}:{strength}>"
    params["Prompt"] = prompt


def _rewrite_by_hash(state: HypernetState, params: dict, hashes: Dict[str, str]) -> None:
    if not hashes:
        return
    cache: Dict[str, Optional[str]] = {}

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in cache:
            cache[name] = _renamed(state, name, hashes.get(infotext_name(name)))
        new = cache[name]
        return f"<hypernet:{new}" if new else match.group(0)

    for field in _PROMPT_FIELDS:
        if isinstance(params.get(field), str) and "<hypernet:" in params[field]:
            params[field] = _TAG_NAME.sub(replace, params[field])
