"""<hypernet:name[:strength][:self=a][:cross=b]> prompt tags, parsed the way the webui finds extra networks."""
from __future__ import annotations

import math
import re
from typing import List, Tuple, Union

from .errors import TagError

TAG = re.compile(r"<(\w+):([^>]+)>")  # the webui's extra-network pattern
NETWORK = "hypernet"
STRENGTH_KEYS = ("self", "cross")
Strength = Union[float, dict]


def _number(text: str, tag: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TagError(f"{tag}: {what} {text!r} is not a number; write e.g. <hypernet:name:0.7>") from None
    if not math.isfinite(value):
        raise TagError(f"{tag}: {what} {text!r} must be a finite number")
    return value


def parse_args(items: List[str], tag: str = "<hypernet>") -> Tuple[str, Strength]:
    """(name, strength) from a tag's ':'-separated arguments; strength is a float or {'all','self','cross'}."""
    if not items or not items[0].strip():
        raise TagError(f"{tag}: missing hypernetwork name; write <hypernet:name> or <hypernet:name:0.7>")
    name = items[0].strip()
    overall = 1.0
    named: dict = {}
    positional = 0
    for raw in items[1:]:
        item = raw.strip()
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key not in STRENGTH_KEYS:
                raise TagError(f"{tag}: unknown setting {key!r}; use self=<number> or cross=<number>")
            named[key] = _number(value.strip(), tag, f"{key} strength")
        elif item:
            positional += 1
            if positional > 1:
                raise TagError(f"{tag}: too many values; write <hypernet:name:strength[:self=a][:cross=b]>")
            overall = _number(item, tag, "strength")
    if not named:
        return name, overall
    return name, {"all": overall, **named}


def parse(prompt: str) -> Tuple[str, List[Tuple[str, Strength]]]:
    """The prompt without <hypernet:...> tags, and the (name, strength) list in the order written."""
    found: List[Tuple[str, Strength]] = []

    def take(match: re.Match) -> str:
        if match.group(1) != NETWORK:
            return match.group(0)
        found.append(parse_args(match.group(2).split(":"), match.group(0)))
        return ""

    cleaned = TAG.sub(take, prompt)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return cleaned, found


def format_tag(name: str, strength: Strength = 1.0) -> str:
    """The tag text that parse() reads back as (name, strength)."""
    if isinstance(strength, dict):
        parts = [f"{strength.get('all', 1.0):g}"] + [f"{k}={strength[k]:g}" for k in STRENGTH_KEYS if k in strength]
        return f"<{NETWORK}:{name}:{':'.join(parts)}>"
    return f"<{NETWORK}:{name}:{float(strength):g}>"
