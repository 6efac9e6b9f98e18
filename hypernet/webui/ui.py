"""The tabs inside the webui: under Train in AUTOMATIC1111 (on_ui_train_tabs), a top-level tab where there is no
Train tab to join (Forge removed it, so its on_ui_train_tabs callbacks never run).

The webui runs on_ui_train_tabs before on_ui_tabs (modules/ui.py), so on_ui_tabs adds the top-level tab only when
the first did not run; no fork detection is needed.
"""
from __future__ import annotations

from ..ui.tabs import Panel, build_create_tab, build_train_tab, wire
from .training import WebuiRuntime

_built = {"train_tabs": False}


def on_ui_train_tabs(params) -> None:
    """AUTOMATIC1111: "Create hypernet" and "Train hypernet" beside the built-in Train sub-tabs."""
    import gradio as gr
    from .state import get_state
    preview = list(getattr(params, "txt2img_preview_params", None) or []) or None
    panel = Panel(get_state(), WebuiRuntime(), txt2img_preview=preview)
    # javascript/hypernet.js moves each tab's side column into the webui's right-hand column while the tab is shown
    with gr.Tab("Create hypernet", id="hypernet_create_tab", elem_id="hypernet_create_tab"):
        create = build_create_tab(gr, panel)
    with gr.Tab("Train hypernet", id="hypernet_train_tab", elem_id="hypernet_train_tab"):
        train = build_train_tab(gr, panel)
    wire(gr, panel, create, train)
    _built["train_tabs"] = True


def on_ui_tabs():
    """Forge (or any webui that never called on_ui_train_tabs): one top-level "Hypernetworks" tab."""
    if _built["train_tabs"]:
        return []
    import gradio as gr
    from .state import get_state
    panel = Panel(get_state(), WebuiRuntime())
    with gr.Blocks(analytics_enabled=False) as blocks:
        with gr.Tabs():
            with gr.Tab("Create"):
                create = build_create_tab(gr, panel)
            with gr.Tab("Train"):
                train = build_train_tab(gr, panel)
        wire(gr, panel, create, train)
    return [(blocks, "Hypernetworks", "hypernet_tab")]


def reset() -> None:
    """Before a UI reload: the next build starts fresh."""
    _built["train_tabs"] = False
