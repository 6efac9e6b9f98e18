"""<hypernet:name[:strength][:self=a][:cross=b]> prompt tags, parsed the way the webui finds extra networks.

A strength is a plain ASCII decimal number (optional sign, digits, optional fraction, optional exponent, e.g. 0.7,
-1, 1e-2) from -10 to 10, ComfyUI's range; each of self= and cross= may be given once.
"""
from __future__ import annotations

import re
from typing import List, Tuple, Union

from .bounds import brief
from .errors import TagError

TAG = re.compile(r"<(\w+):([^>]+)>")  # the webui's extra-network pattern
NETWORK = "hypernet"
EMPTY = f"<{NETWORK}:>"  # a tag with no arguments: TAG, and so the webui, never matches it
STRENGTH_KEYS = ("self", "cross")
STRENGTH_RANGE = (-10.0, 10.0)
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # ASCII only, unlike float()
Strength = Union[float, dict]


def shown(tag: str, limit: int = 120) -> str:
    """A tag as messages quote it: whole when short, else its start (a prompt may hold megabytes)."""
    return tag if len(tag) <= limit else f"{tag[:limit - 20]}... ({len(tag):,} characters)>"


def _missing_name(tag: str) -> TagError:
    """The error for a tag that names no hypernetwork."""
    return TagError(f"{tag}: missing hypernetwork name; write <hypernet:name> or <hypernet:name:0.7>")


def _number(text: str, tag: str, what: str) -> float:
    """`text` as a strength, or a TagError naming the tag, the rule and an example."""
    low, high = STRENGTH_RANGE
    if not NUMBER.fullmatch(text):
        raise TagError(f"{tag + ': ' if tag else ''}{what} {brief(text)} is not a number; write plain digits such as 0.7, -1 or 1e-2, "
                       "e.g. <hypernet:name:0.7>")
    value = float(text)
    if not low <= value <= high:
        raise TagError(f"{tag + ': ' if tag else ''}{what} {brief(text).strip(chr(39))} is outside {low:g}..{high:g}; write a number from {low:g} to {high:g}, "
                       "e.g. <hypernet:name:0.7>")
    return value


def strength_value(text: str) -> float:
    """A strength given outside a tag (a comparison's strengths, an X/Y/Z axis value), by the tags' rule."""
    return _number(text.strip(), "", "strength")


def parse_args(items: List[str], tag: str = "<hypernet>") -> Tuple[str, Strength]:
    """(name, strength) from a tag's ':'-separated arguments; strength is a float or {'all','self','cross'}."""
    if not items or not items[0].strip():
        raise _missing_name(tag)
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
            if key in named:
                raise TagError(f"{tag}: {key}= is given twice; write it once, e.g. <hypernet:name:1:{key}=0.5>")
            named[key] = _number(value.strip(), tag, f"{key} strength")
        elif item:
            positional += 1
            if positional > 1:
                raise TagError(f"{tag}: too many values; write <hypernet:name:strength[:self=a][:cross=b]>")
            overall = _number(item, tag, "strength")
    if not named:
        return name, overall
    return name, {"all": overall, **named}


def drop_empty(prompt: str) -> Tuple[str, List[TagError]]:
    """The prompt without <hypernet:> tags, and the error for each one removed."""
    return prompt.replace(EMPTY, ""), [_missing_name(EMPTY) for _ in range(prompt.count(EMPTY))]


def parse(prompt: str) -> Tuple[str, List[Tuple[str, Strength]]]:
    """The prompt without <hypernet:...> tags, and the (name, strength) list in the order written.

    The first tag that cannot be understood, including an empty <hypernet:>, raises its TagError.
    """
    found: List[Tuple[str, Strength]] = []

    def take(match: re.Match) -> str:
        if match.group(1) != NETWORK:
            return match.group(0)
        found.append(parse_args(match.group(2).split(":"), shown(match.group(0))))
        return ""

    cleaned = TAG.sub(take, prompt)
    cleaned, empty = drop_empty(cleaned)
    if empty:
        raise empty[0]
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return cleaned, found


def format_tag(name: str, strength: Strength = 1.0) -> str:
    """The tag text that parse() reads back as (name, strength)."""
    if isinstance(strength, dict):
        parts = [f"{strength.get('all', 1.0):g}"] + [f"{k}={strength[k]:g}" for k in STRENGTH_KEYS if k in strength]
        return f"<{NETWORK}:{name}:{':'.join(parts)}>"
    return f"<{NETWORK}:{name}:{float(strength):g}>"


def _rewrite(prompt: str, change) -> Tuple[str, int]:
    """The prompt with change(index, name, strength) -> (name, strength) applied to each hypernet tag; how many."""
    count = 0

    def edit(match: re.Match) -> str:
        nonlocal count
        if match.group(1) != NETWORK:
            return match.group(0)
        name, strength = parse_args(match.group(2).split(":"), shown(match.group(0)))
        name, strength = change(count, name, strength)
        count += 1
        return format_tag(name, strength)

    return TAG.sub(edit, prompt), count


def with_strength(prompt: str, strength: float) -> Tuple[str, int]:
    """Every hypernet tag's overall strength set to `strength` (self=/cross= kept); the prompt and the tag count."""
    def change(_, name, old):
        return name, ({**old, "all": strength} if isinstance(old, dict) else strength)
    return _rewrite(prompt, change)


def with_file(prompt: str, name: str, strength: float = 1.0) -> str:
    """The first hypernet tag made to name `name` (its strength kept), or <hypernet:name:strength> appended."""
    text, count = _rewrite(prompt, lambda i, old_name, old: (name if i == 0 else old_name, old))
    return text if count else f"{prompt} {format_tag(name, strength)}".strip()
