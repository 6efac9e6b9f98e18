"""The extension's settings as a table (label, help, default, range) and one accessor, `value(key)`, for every host.

`value` gives the default unless a host registered a reader (`set_reader`): the webui's reads its Settings tab
(webui/settings.py registers it when the extension loads); the standalone UI registers none and uses the defaults.
A value a reader gives is coerced to the setting's type; one that does not fit (or is not among its choices) means
the default.

Options (the webui's key is "hypernet_" + key):
    default_strength     strength for a tag written without one, <hypernet:name> (the webui's is 1.0)
    cache_size           how many loaded hypernetworks stay in RAM, reused while the file is unchanged (0 = none)
    save_format          file type for new files from the API/tabs: ".pt" (every webui, ComfyUI) or ".safetensors"
    log_dir              training runs go to <log_dir>/<date>/<name>/ ; empty = <webui data>/textual_inversion, the
                         folder the built-in Train tab uses
    warn_width_mismatch  warn when a file does not reach the loaded model's cross-attention (an SD1 file on SDXL
                         only reaches 640/1280 self-attention) or applies to nothing at all
    infotext_hashes      write "Hypernet hashes: name: shorthash, ..." into the image infotext, so that pasting it
                         finds renamed files again
    warning_popup        also show warnings as a popup (gr.Warning) besides the text under the image and the console
    card_hashes          hash files that have no cached hash when the cards page lists them (slow the first time for
                         a large folder; otherwise a hash appears once the file has been used)
    hide_unfit           hide cards of files that do not reach the loaded model's cross-attention
    allow_any_path       let the Train tab and the HTTP API write training files outside the hypernetwork folder
                         (output) and the log folder (log_dir, latent_cache_dir); off by default
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

SAVE_FORMATS = (".pt", ".safetensors")
# The registered reader: key -> the host's raw value; it raises LookupError where the host has none.
_readers: Dict[str, Callable[[str], Any]] = {}


@dataclass(frozen=True)
class Setting:
    default: Any
    label: str
    info: str = ""
    choices: Optional[Tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None


SETTINGS = {
    "default_strength": Setting(1.0, "Strength of a <hypernet:name> tag written without one",
                                "the webui's built-in default is 1.0", minimum=0.0, maximum=2.0, step=0.05),
    "cache_size": Setting(4, "Hypernetworks kept loaded in memory",
                          "reused while the file is unchanged; 0 loads from disk every generation", minimum=0),
    "save_format": Setting(".pt", "File type for new hypernetworks",
                           ".pt loads in every webui and ComfyUI; .safetensors never needs unpickling",
                           choices=SAVE_FORMATS),
    "log_dir": Setting("", "Folder for training runs (copies, previews, loss log)",
                       "empty: <webui data folder>/textual_inversion, like the built-in Train tab"),
    "warn_width_mismatch": Setting(True, "Warn when a hypernetwork does not fit the loaded model",
                                   "e.g. an SD1 file on SDXL only reaches self-attention"),
    "infotext_hashes": Setting(True, "Add Hypernet hashes to infotext",
                               "pasting the infotext then finds renamed files by hash"),
    "warning_popup": Setting(False, "Also show hypernetwork warnings as a popup",
                             "they always appear under the image and in the console"),
    "card_hashes": Setting(False, "Hash files without a cached hash when listing cards",
                           "slow the first time for a large folder"),
    "hide_unfit": Setting(False, "Hide cards that do not fit the loaded model",
                          "files that do not reach its cross-attention"),
    "allow_any_path": Setting(False, "Allow the UI/API to write outside the hypernetwork and log folders",
                              "training output, log folder and latent cache from the Train tab and the HTTP API; "
                              "off: they must lie inside the hypernetwork folder (output) or the log folder"),
}


def _coerce(key: str, raw):
    setting = SETTINGS[key]
    default = setting.default
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if isinstance(default, int):
            number = int(float(raw))
            return max(number, int(setting.minimum)) if setting.minimum is not None else number
        if isinstance(default, float):
            return float(raw)
        text = "" if raw is None else str(raw)
        if setting.choices and text not in setting.choices:
            return default
        return text
    except (TypeError, ValueError):
        return default


def set_reader(reader: Optional[Callable[[str], Any]]) -> None:
    """Read settings through `reader(key)` (None: back to the defaults)."""
    _readers.pop("host", None)
    if reader is not None:
        _readers["host"] = reader


def value(key: str):
    """The current value of one of our settings, or its default."""
    if key not in SETTINGS:
        raise KeyError(f"unknown hypernet setting {key!r}")
    reader = _readers.get("host")
    if reader is None:
        return SETTINGS[key].default
    try:
        raw = reader(key)
    except LookupError:
        return SETTINGS[key].default
    return _coerce(key, raw)
