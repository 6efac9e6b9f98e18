"""The bounds on everything that comes from outside (files, config files, captions, requests), and the checks that
apply them, written once.

A number from outside is range-checked before it is used or printed; a message shows an unbounded value by its
first digits and its length, never whole. JSON and TOML are measured (size, values, nesting) before they are
parsed, so no parser meets a file it would need unbounded memory or recursion for. Names and paths from a UI, an
API request or a command line are checked before any file system call sees them.
"""
from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Tuple

import numpy

from .errors import ConfigError, FileFormatError

# Files.
MAX_PICKLE_BYTES = 64 << 20       # a hypernetwork's pickle is a few KB, an SDXL .ckpt's about 1 MB
MAX_PICKLE_OPS = 1 << 19          # instructions per file (an SDXL .ckpt with EMA needs about 200,000)
MAX_PICKLE_OBJECTS = 1 << 17      # containers, memo entries, tensors and storages built per file
MAX_INT_BITS = 128                # every integer a weights file holds fits (the legacy magic number has 77 bits)
MAX_DEPTH = 64                    # nesting of pickled objects, JSON and TOML (real files: under 10)
MAX_HEADER_BYTES = 100 << 20      # safetensors' own limit
MAX_JSON_VALUES = 1 << 18         # values in one JSON text (an SDXL header has about 20,000)
MAX_TENSORS = 1 << 14             # tensors, and storages, in a file (SDXL: about 2,500; with EMA about 5,000)
MAX_ZIP_ENTRIES = 1 << 15         # members of a torch zip file (one per storage, plus 5; SDXL: about 2,500)
MAX_LAYERS = 64                   # entries of a layer structure (the webui's are 3 to 6)
MAX_WIDTHS = 64                   # widths in one hypernetwork (SDXL uses 6)
MAX_STEP = 10 ** 9                # training steps, and a file's recorded step
MAX_LIST_ENTRIES = 1000           # a schedule's entries, a comparison's strengths
# Inputs.
MAX_CONFIG_BYTES = 1 << 20        # a --config file
MAX_CAPTION_BYTES = 64 << 10      # a caption file: CLIP reads 77 tokens, a few hundred bytes
MAX_TEXT_BYTES = 1 << 20          # a template or a preview prompts file
MAX_IMAGE_FILE_BYTES = 256 << 20  # an image file
MAX_DECODED_BYTES = 512 << 20     # an image's pixels once decoded, counted as our conversion holds them
MIN_SIZE, MAX_SIZE = 64, 8192     # training width and height (multiples of 8)
MAX_NAME = 100                    # a file name given in a UI or request, without its suffix
MAX_PATH = 4096                   # a path given in a UI, a request or on the command line
RESERVED_NAMES = frozenset({".", "..", "none"})   # "None" is the webui's "no hypernetwork"
DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                          *(f"lpt{i}" for i in range(1, 10))})   # Windows opens a device for these, suffix or not
_NAME_CHARS = re.compile(r'[\\/:<>"|?*\x00-\x1f\x7f]')


# ---------------------------------------------------------------------------------------------- printing values
def number_text(value: int, digits: int = 12) -> str:
    """An integer for a message: whole when short, else its first digits and its length (never all of it)."""
    bits = abs(value).bit_length()
    if bits <= 64:
        return str(value)
    length = int(bits * 0.30103) + 1                       # log10(2): the digit count, to within one
    if length > 4000:                                      # str() would refuse it, and it costs quadratic time
        return f"an integer of about {length:,} digits"
    text = str(abs(value))
    return f"{'-' if value < 0 else ''}{text[:digits]}... ({len(text):,} digits)"


def brief(value, limit: int = 80) -> str:
    """A short, never-recursing description of a value from outside, for error messages."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = number_text(value)
    elif isinstance(value, (str, bytes)):
        text = repr(value[:limit + 1])
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        text = f"a {type(value).__name__} of {len(value):,} items"
    else:
        text = getattr(value, "brief_text", None) or f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------- numbers
def whole_number(value, field: str, low: int, high: int) -> int:
    """`value` (an int, an integral float or its text) as an int within [low, high]; ConfigError naming `field`."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise ConfigError(field, f"expected a whole number from {low:,} to {high:,}, got {brief(text, 30)} "
                                     f"({len(text):,} characters)")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(field, f"expected a whole number, got {brief(text)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a whole number, got {brief(value)}")
    if isinstance(value, float) and not (value == value and abs(value) < 2 ** 63 and value == int(value)):
        raise ConfigError(field, f"expected a whole number from {low:,} to {high:,}, got {brief(value)}")
    if value < low:
        raise ConfigError(field, f"must be at least {low:,}, got {brief(int(value))}")
    if value > high:
        raise ConfigError(field, f"must be at most {high:,}, got {brief(int(value))}")
    return int(value)


# ---------------------------------------------------------------------------------------------- JSON and TOML
# String literals of JSON and TOML (basic, literal, multi-line) and TOML comments: what holds brackets that are not
# structure. Each alternative fails within a line, or once at the end of the text, so the scan stays linear.
# Possessive runs (*+, ++): the regex engine keeps no backtracking state per character of a megabyte-long string.
_LITERALS = re.compile(rb'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]++|\\.)*+"|\'[^\'\n]*+\'|#[^\n]*+')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def measure(raw: bytes) -> Tuple[int, int]:
    """(values, nesting depth) of a JSON or TOML text without parsing it. The values are an upper bound, counted on
    the raw bytes (commas, brackets and quotes, those inside strings too) so that counting costs no memory; the
    depth is counted on the brackets outside string literals, and only once the count is known to be small."""
    values = max(raw.count(b",") + raw.count(b"[") + raw.count(b"{"), raw.count(b'"') // 2) + 1
    if values > MAX_JSON_VALUES:
        return values, 0                                   # refused on the count; no depth needed
    structure = _LITERALS.sub(b"", raw)                    # at most `values` literals to cut out
    brackets = _NOT_BRACKET.sub(b"", structure).translate(_BRACKET_STEPS)
    steps = numpy.frombuffer(brackets, dtype=numpy.int8)
    return values, int(steps.cumsum(dtype=numpy.int32).max(initial=0))


def check_structure(where, raw: bytes, what: str, max_bytes: int) -> None:
    """FileFormatError naming `where` unless `raw` is within the byte, value and depth bounds."""
    if len(raw) > max_bytes:
        raise FileFormatError(where, f"{what} is {len(raw):,} bytes, over the {max_bytes:,}-byte limit")
    values, depth = measure(raw)
    if values > MAX_JSON_VALUES:
        raise FileFormatError(where, f"{what} holds about {values:,} values, over the {MAX_JSON_VALUES:,} limit; "
                                     "not parsed")
    if depth > MAX_DEPTH:
        raise FileFormatError(where, f"{what} is nested too deeply ({depth:,} levels, over {MAX_DEPTH}); not parsed")


def parse_json(where, text, what: str, max_bytes: int = MAX_HEADER_BYTES):
    """JSON from outside, measured first; one clear FileFormatError for size, nesting, syntax or encoding."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    check_structure(where, raw, what, max_bytes)
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FileFormatError(where, f"{what} is not valid JSON ({short_error(exc)}); truncated or corrupt") from None


def read_json(path, what: str, max_bytes: int = MAX_CONFIG_BYTES):
    """A small JSON file (settings, user metadata) read through parse_json; OSError is the caller's to name."""
    with open(path, "rb") as fh:
        return parse_json(path, fh.read(max_bytes + 1), what, max_bytes)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first[:limit] + ("..." if len(first) > limit else "")


# ---------------------------------------------------------------------------------------------- text files
def read_text(path, cap: int) -> Tuple[str, bool]:
    """(UTF-8 text of a file's first `cap` bytes, whether the file holds more): a file is never read past what is
    used, and a character the cap cuts in two is dropped. OSError and UnicodeDecodeError are the caller's to name."""
    with open(path, "rb") as fh:
        data = fh.read(cap + 1)
    cut = len(data) > cap
    return codecs.getincrementaldecoder("utf-8-sig")().decode(data[:cap], final=not cut), cut


# ---------------------------------------------------------------------------------------------- names and paths
def check_name(name, field: str = "name") -> str:
    """A file name from a UI, a request or a file: no separators or control characters, at most MAX_NAME
    characters, not reserved (., .., None, the Windows device names); ConfigError naming `field`."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(field, "must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ConfigError(field, f"{brief(name, 40)} is {len(name):,} characters long; use at most {MAX_NAME}")
    if _NAME_CHARS.search(name):
        raise ConfigError(field, f"{brief(name)} contains a character that cannot be used in a file name or a tag "
                                 "(\\ / : < > \" | ? * or a control character); use letters, digits, spaces, '.', "
                                 "'_' or '-'")
    if name.lower() in RESERVED_NAMES or name.split(".")[0].strip().lower() in DEVICE_NAMES:
        raise ConfigError(field, f"{name!r} is reserved; choose another name")
    return name


def check_path(value, field: str) -> str:
    """A path from a UI, a request, a config file or the command line as text: no NUL, at most MAX_PATH
    characters, no component over 255 bytes; ConfigError naming `field`."""
    if not isinstance(value, (str, Path)):
        raise ConfigError(field, f"expected a path, got {brief(value)}")
    text = str(value)
    if "\x00" in text:
        raise ConfigError(field, f"{brief(text)} contains a NUL character, which no path can hold")
    if len(text) > MAX_PATH:
        raise ConfigError(field, f"{brief(text, 40)} is {len(text):,} characters long; a path may have at most "
                                 f"{MAX_PATH}")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in re.split(r"[\\/]", text)):
        raise ConfigError(field, f"{brief(text, 60)} has a part longer than 255 bytes, more than a file system "
                                 "allows in a name")
    return text
