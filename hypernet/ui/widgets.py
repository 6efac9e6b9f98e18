"""Gradio helpers both tab files use: the Panel the tabs act on, one component per option field, values back to
option fields, and message HTML. Nothing here imports the webui's `modules` or gradio itself (callers pass `gr`)."""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from ..config import COMMON_DIMS, CreateOptions, TrainOptions, field_default


@dataclass
class Panel:
    """What the tabs act on: the state (library folder, jobs), where jobs run, and optional txt2img inputs."""

    state: Any
    runtime: object                                # where jobs run: LocalRuntime, or the webui's WebuiRuntime
    txt2img_preview: Optional[Sequence] = None     # gradio components, in TXT2IMG_PREVIEW_FIELDS order
    log_dir: Optional[str] = None                  # the Log dir box's value (None: the setting / webui default)


def name_label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def field_label(f: dataclasses.Field) -> str:
    """A field's UI label: its own from the dataclass, else its name in words."""
    return f.metadata.get("label") or name_label(f.name)


def values_text(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def component(gr, f: dataclasses.Field, prefix: str, default=None, label: Optional[str] = None):
    """One gradio input for a dataclass field: its kind, default, help text and choices come from the field.

    Every label is unique within the tab (`label` words a field of a second form): the webui and Forge keep each
    field's value in ui-config.json keyed by tab and label."""
    value_ = field_default(f) if default is None else default
    meta = f.metadata
    common = dict(label=label or field_label(f), info=meta.get("help", ""), elem_id=f"{prefix}_{f.name}")
    if f.name == "dims":
        choices = [str(d) for d in COMMON_DIMS]
        return gr.CheckboxGroup(choices=choices, value=[str(d) for d in value_], **common)
    if meta.get("choices"):
        return gr.Dropdown(choices=[str(c) for c in meta["choices"]], value=str(value_), **common)
    if isinstance(value_, bool):
        return gr.Checkbox(value=value_, **common)
    if isinstance(value_, int):
        return gr.Number(value=value_, precision=0, **common)
    if isinstance(value_, float):
        return gr.Number(value=value_, **common)
    if isinstance(value_, list):
        return gr.Textbox(value=values_text(value_), **common)
    return gr.Textbox(value="" if value_ is None else str(value_), **common)


def fields_of(cls, skip: Sequence[str] = ()) -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in skip]


def cleaned(names: Sequence[str], values: Sequence) -> dict:
    """Component values as option fields; an empty number box means the default."""
    out = {}
    for name, val in zip(names, values):
        if val is None:
            continue
        if isinstance(val, float) and val.is_integer() and name in INT_FIELDS:
            val = int(val)
        out[name] = val
    return out


INT_FIELDS = {f.name for cls in (CreateOptions, TrainOptions) for f in dataclasses.fields(cls)
               if isinstance(field_default(f), int) and not isinstance(field_default(f), bool)}


def message_html(text: str, error: bool = False) -> str:
    colour = "#c0392b" if error else "inherit"
    return f"<p style='color:{colour}'>{html.escape(text)}</p>"


def error_html(exc: Exception) -> str:
    return message_html(f"Error: {exc}", error=True)



def is_essential(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("essential"))
