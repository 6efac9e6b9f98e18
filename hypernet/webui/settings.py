"""The extension's settings in the webui: a "Hypernet" section in its Settings tab, read back by ui/settings.value().

The table of settings (defaults, labels, help, ranges) is ui/settings.py; register_reader() makes its `value(key)` read
shared.opts ("hypernet_" + key), falling back to the default where the webui has no such option (the API-only
`--nowebui` mode never calls on_ui_settings, and Forge or tests may lack an option).
"""
from __future__ import annotations

import html
from typing import Any, Dict, Optional

from ..ui.settings import SETTINGS, set_reader

PREFIX = "hypernet_"
SECTION = ("hypernet", "Hypernet", "sd")  # (id, label, category): the webui groups sections by category
_MISSING = object()


def read_opts(key: str):
    """Our option `key` from the webui's shared.opts; KeyError while the webui has none."""
    raw = webui_option(PREFIX + key, _MISSING)
    if raw is _MISSING:
        raise KeyError(key)
    return raw


def register_reader() -> None:
    """Make ui/settings.value() read the webui's Settings tab."""
    set_reader(read_opts)


def webui_option(name: str, default):
    """A webui option (ours: PREFIX + key; or e.g. extra_networks_default_multiplier), or `default`."""
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
        component: Optional[object] = None
        args: Optional[Dict[str, Any]] = None
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
