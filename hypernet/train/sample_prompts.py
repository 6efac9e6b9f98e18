"""Preview prompt files in kohya's sd-scripts format: one prompt per line with inline options.

    masterpiece, 1girl, looking at viewer --n lowres, bad hands --w 512 --h 768 --s 28 --d 42 --l 7.5

--n negative prompt, --w width, --h height, --s sampling steps, --d seed, --l guidance scale, --ss sampler name.
Lines starting with # and blank lines are skipped. An option a line leaves out takes the trainer's preview option.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..bounds import MAX_SIZE, MAX_TEXT_BYTES, brief, read_text, whole_number
from ..errors import ConfigError

FIELD = "preview_prompts_file"
_OPTION = re.compile(r"\s--(ss|n|w|h|s|d|l)(?=\s|$)")
_NUMBERS = {"w": int, "h": int, "s": int, "d": int, "l": float}


@dataclass
class SamplePrompt:
    """One preview: a prompt and the settings its line gave (None: the trainer's preview option)."""

    prompt: str
    negative: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    steps: Optional[int] = None
    seed: Optional[int] = None
    cfg_scale: Optional[float] = None
    sampler: Optional[str] = None


_KEYS = {"n": "negative", "w": "width", "h": "height", "s": "steps", "d": "seed", "l": "cfg_scale", "ss": "sampler"}


def parse_line(line: str, where: str = FIELD) -> Optional[SamplePrompt]:
    """A SamplePrompt from one line, None for a comment or a blank line; ConfigError naming `where` otherwise."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = _OPTION.split(" " + text)
    prompt, values = parts[0].strip(), {}
    for key, raw in zip(parts[1::2], parts[2::2]):
        values[_KEYS[key]] = _value(key, raw.strip(), where)
    if not prompt:
        raise ConfigError(FIELD, f"{where}: the line {text!r} has options but no prompt")
    for name in ("width", "height"):
        if values.get(name) is not None and (values[name] < 8 or values[name] % 8):
            raise ConfigError(FIELD, f"{where}: --{name[0]} {values[name]} must be a multiple of 8, at least 8")
    if values.get("steps") is not None and values["steps"] < 1:
        raise ConfigError(FIELD, f"{where}: --s {values['steps']} must be at least 1")
    return SamplePrompt(prompt, **values)


def _value(key: str, raw: str, where: str):
    """An option's value converted to its type, or a ConfigError naming the line."""
    if key not in _NUMBERS:
        return raw
    if _NUMBERS[key] is int:  # range-checked before a preview allocates by it
        try:
            return whole_number(raw, key, *_RANGES[key])
        except ConfigError as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise ConfigError(FIELD, f"{where}: --{key} {brief(raw)} is not a number in range ({detail})") from None
    try:
        number = _NUMBERS[key](raw)
        if not math.isfinite(number):
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(FIELD, f"{where}: --{key} {brief(raw)} is not a finite number") from None
    return number


_RANGES = {"w": (8, MAX_SIZE), "h": (8, MAX_SIZE), "s": (1, 10_000), "d": (-1, 2 ** 63 - 1)}


def prompt_lines(path, field: str = FIELD) -> List[tuple]:
    """(where, line) for each prompt line of a text file (no blanks, no # comments); ConfigError naming `field`
    when the file is missing, unreadable, not UTF-8 or holds no prompt."""
    file = Path(str(path)).expanduser()
    try:
        text, _ = read_text(file, MAX_TEXT_BYTES)
    except OSError as exc:
        raise ConfigError(field, f"{file}: cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(field, f"{file}: is not UTF-8 text") from None
    lines = [(f"{file}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith("#")]
    if not lines:
        raise ConfigError(field, f"{file}: holds no prompts (one per line; # starts a comment)")
    return lines


def read_prompts(path) -> List[SamplePrompt]:
    """Every preview a prompt file asks for, in order; ConfigError naming the file and line when one is wrong."""
    return [p for where, line in prompt_lines(path) if (p := parse_line(line, where)) is not None]
