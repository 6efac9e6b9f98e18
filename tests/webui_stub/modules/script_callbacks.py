"""modules/script_callbacks.py: every registration is on_xxx(callback, *, name=None); the webui calls the
xxx_callback() functions at the points named in A1111-FACTS.md section 8, reporting (not raising) callback errors."""
import inspect
import os
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])
callback_map = {name: [] for name in (
    "callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_tabs", "callbacks_ui_train_tabs",
    "callbacks_ui_settings", "callbacks_infotext_pasted", "callbacks_script_unloaded", "callbacks_before_ui")}


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    callbacks.append(ScriptCallback(filename, fun, callback_name))


def _run(category, *args):
    for c in callback_map[f"callbacks_{category}"]:
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {c.name} for {category}", exc_info=True)


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_settings_callback():
    _run("ui_settings")


def infotext_pasted_callback(infotext: str, params: dict):
    _run("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("script_unloaded")


def before_ui_callback():
    _run("before_ui")


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_ui_train_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_train_tabs'], callback, name=name, category='ui_train_tabs')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map['callbacks_infotext_pasted'], callback, name=name, category='infotext_pasted')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')


class UiTrainTabParams:
    """modules/script_callbacks.py: passed to on_ui_train_tabs callbacks."""

    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


def ui_tabs_callback():
    res = []
    for c in callback_map['callbacks_ui_tabs']:
        try:
            res += c.callback() or []
        except Exception:
            errors.report(f"Error executing callback {c.name} for ui_tabs", exc_info=True)
    return res


def ui_train_tabs_callback(params: UiTrainTabParams):
    _run("ui_train_tabs", params)
