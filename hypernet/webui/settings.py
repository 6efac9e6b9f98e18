"""The extension's settings: a "Hypernet" section in the webui's Settings tab, and one accessor with defaults.

Every other module reads settings through `value(key)`, which falls back to the default below when the webui has not
registered them (the API-only `--nowebui` mode never calls on_ui_settings, and Forge or tests may lack an option).

Options (webui key = "hypernet_" + key):
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

import html

from dataclasses import dataclass
from typing import Any, Optional, Tuple

PREFIX = "hypernet_"
SECTION = ("hypernet", "Hypernet", "sd")  # (id, label, category): the webui groups sections by category
SAVE_FORMATS = (".pt", ".safetensors")


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


def value(key: str):
    """The current value of one of our settings (without the prefix), or its default."""
    if key not in SETTINGS:
        raise KeyError(f"unknown hypernet setting {key!r}")
    try:
        from modules import shared
        opts = shared.opts
    except Exception:  # not inside a webui, or too early in its start-up
        opts = None
    if opts is None:
        return SETTINGS[key].default
    try:
        raw = getattr(opts, PREFIX + key)
    except AttributeError:
        return SETTINGS[key].default
    return _coerce(key, raw)


def webui_option(name: str, default):
    """A webui option that is not ours (e.g. extra_networks_default_multiplier), or `default`."""
    try:
        from modules import shared
        return getattr(shared.opts, name)
    except Exception:
        return default


def on_ui_settings() -> None:
    """Add the "Hypernet" section; point "Add hypernetwork to prompt" at our list (it also has .safetensors)."""
    from modules import shared
    try:
        import gradio as gr
    except ImportError:  # only in stand-ins; the webui always has gradio
        gr = None

    options = {}
    for key, setting in SETTINGS.items():
        component, args = None, None
        if setting.choices and gr is not None:
            component, args = gr.Radio, {"choices": list(setting.choices)}
        elif isinstance(setting.default, int) and not isinstance(setting.default, bool) and gr is not None:
            component, args = gr.Number, {"precision": 0}
        elif isinstance(setting.default, float) and gr is not None:
            # The Settings page only infers components for str/int/bool defaults; a bare float stops the webui.
            component, args = gr.Slider, {"minimum": setting.minimum, "maximum": setting.maximum,
                                          "step": setting.step}
        info = shared.OptionInfo(setting.default, setting.label, component, args)
        # The Settings page puts this help text into HTML: "<webui data folder>" would vanish as a tag.
        options[PREFIX + key] = info.info(html.escape(setting.info)) if setting.info else info
    # options_section sets .section (and .category_id) the way the webui's own sections are declared.
    for key, info in shared.options_section(SECTION, options).items():
        shared.opts.add_option(key, info)
    _retarget_add_to_prompt(shared)


def _retarget_add_to_prompt(shared) -> None:
    """The built-in "Add hypernetwork to prompt" dropdown lists shared.hypernetworks (.pt files only, by stem);
    list the names our tag handler accepts instead. Undone by restore_add_to_prompt() when the script unloads."""
    info = getattr(shared.opts, "data_labels", {}).get("sd_hypernetwork")
    if info is None or getattr(info, "_hypernet_original", None) is not None:
        return
    from .state import get_state

    def choices():
        return {"choices": ["None", *get_state().card_names()]}

    info._hypernet_original = (info.component_args, info.refresh)
    info.component_args = choices
    info.refresh = lambda: get_state().refresh()


def restore_add_to_prompt() -> None:
    try:
        from modules import shared
        info = shared.opts.data_labels.get("sd_hypernetwork")
    except Exception:
        return
    original = getattr(info, "_hypernet_original", None)
    if original is not None:
        info.component_args, info.refresh = original
        info._hypernet_original = None
