"""modules/ui_loadsave.py: the webui (and Forge) keep the value of every labelled input in ui-config.json, keyed
"<interface id>/<label>/<field>", a button by its text. At a start the first component with a key writes its value
when the file has none; every component with that key then takes the saved value. The rules of v1.10.1's
UiLoadsave.add_block / add_component, for the component types it tracks."""
import json
import os

import gradio as gr


class UiLoadsave:
    def __init__(self, filename):
        self.filename = filename
        self.ui_settings = {}
        self.component_mapping = {}
        if os.path.exists(filename):
            with open(filename, encoding="utf8") as fh:
                self.ui_settings = json.load(fh)

    def _apply(self, path, obj, field, condition=None):
        key = f"{path}/{field}"
        if getattr(obj, "do_not_save_to_config", False):
            return
        saved = self.ui_settings.get(key)
        if saved is None:
            self.ui_settings[key] = getattr(obj, field)
        elif condition is None or condition(saved):
            if isinstance(obj, gr.Textbox) and field == "value":
                saved = str(saved)
            elif isinstance(obj, gr.Number) and field == "value":
                saved = float(saved)
            setattr(obj, field, saved)
        if field == "value" and key not in self.component_mapping:
            self.component_mapping[key] = obj

    def add_component(self, path, x):
        kinds = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown, gr.Button)
        if type(x) in kinds and x.visible:
            self._apply(path, x, "visible")
        if type(x) == gr.Slider:
            for field in ("value", "minimum", "maximum", "step"):
                self._apply(path, x, field)
        if type(x) in (gr.Checkbox, gr.Textbox, gr.Number):
            self._apply(path, x, "value")
        if type(x) in (gr.Radio, gr.Dropdown):
            choices = [c[0] if isinstance(c, tuple) else c for c in (x.choices or [])]
            multi = getattr(x, "multiselect", False)
            self._apply(path, x, "value", lambda v: all(i in choices for i in v) if multi else v in choices)

    def add_block(self, x, path=""):
        if hasattr(x, "children"):
            for child in x.children:
                self.add_block(child, path)
        elif x.label is not None:
            self.add_component(f"{path}/{x.label}", x)
        elif isinstance(x, gr.Button) and x.value is not None:
            self.add_component(f"{path}/{x.value}", x)

    def dump_defaults(self):
        with open(self.filename, "w", encoding="utf8") as fh:
            json.dump(self.ui_settings, fh, indent=4)
