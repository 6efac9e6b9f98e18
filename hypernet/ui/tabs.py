"""The Create and Train tabs, built with gradio from the option dataclasses (works with gradio 3.41 and 4.x).

Every creation and training option becomes one component whose default, help text and choices come from the field
of CreateOptions / TrainOptions, so a default lives in one place. The buttons call ui/actions.py, the same code
as the HTTP API. The tabs need a `Panel`: the state (folder, jobs) and the runtime jobs run in; the webui, Forge and
the standalone UI each give their own. Nothing here imports the webui's `modules`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Sequence

from ..config import CreateOptions, TrainOptions
from . import actions
from .settings import SAVE_FORMATS, value
from .widgets import Panel, cleaned, component, error_html, fields_of, is_essential, message_html, name_label

NEW = "(new hypernetwork)"
# One stylesheet for every host (the webui, Forge, the standalone UI), carried by the tabs themselves: a <style>
# applies even inside a hidden element. The side column stays in view while the long form scrolls.
SIDE_CSS = """
.hypernet-style { display: none !important; }
.hypernet-side { position: sticky; top: 0.5em; align-self: flex-start; }
.hypernet-pick { align-items: flex-end; }
"""
# The closed accordions under the essential fields, in order; a TrainOptions field's "group" picks one.
GROUPS = (("data", "Data"), ("train", "Optimisation"), ("output", "Saving and logs"),
          ("validation", "Validation"), ("preview", "Previews"))
# The webui's txt2img_preview_params order (UiTrainTabParams): prompt, negative, steps, sampler, cfg, seed, w, h
TXT2IMG_PREVIEW_FIELDS = ("preview_prompt", "preview_negative_prompt", "preview_steps", "preview_sampler",
                          "preview_cfg_scale", "preview_seed", "preview_width", "preview_height")


# ---------------------------------------------------------------------------------------------- Create
CREATE_INPUTS = tuple(f.name for f in fields_of(CreateOptions)) + ("format", "overwrite")


def create_click(panel: Panel, *values):
    """Create button: (message HTML, new choices for the Train tab's hypernetwork list)."""
    fields = cleaned(CREATE_INPUTS, values)
    try:
        reply = actions.create_file(panel.state, fields)
    except actions.ActionError as exc:
        return error_html(exc), None
    text = reply["info"] + (f". {reply['note']}" if reply.get("note") else "")
    return message_html(text), reply


def build_create_tab(gr, panel: Panel):
    """The Create tab's contents, inside the caller's Tab/Blocks; returns (components by name, button, output).

    The fields a new user sets come first, the rest wait in a closed accordion; the button and its result sit in
    a side column (elem_id hypernet_create_side) that the webui's page script moves into its own right column."""
    comps: Dict[str, object] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            for f in fields_of(CreateOptions):
                if is_essential(f):
                    comps[f.name] = component(gr, f, "hypernet_create")
            with gr.Accordion("More options", open=False):
                for f in fields_of(CreateOptions):
                    if not is_essential(f):
                        comps[f.name] = component(gr, f, "hypernet_create")
                comps["format"] = gr.Dropdown(choices=list(SAVE_FORMATS), value=value("save_format"),
                                              label="File type", elem_id="hypernet_create_format",
                                              info=".pt loads in every webui and ComfyUI; .safetensors never "
                                                   "unpickles")
                comps["overwrite"] = gr.Checkbox(value=False, label="Overwrite a file of the same name",
                                                 elem_id="hypernet_create_overwrite")
        with gr.Column(scale=2, min_width=280, elem_id="hypernet_create_side", elem_classes=["hypernet-side"]):
            gr.HTML(f"<style>{SIDE_CSS}</style>", elem_classes=["hypernet-style"])
            button = gr.Button("Create hypernetwork file", variant="primary", elem_id="hypernet_create_button")
            output = gr.HTML(elem_id="hypernet_create_result")
    return comps, button, output


# ---------------------------------------------------------------------------------------------- Train
TRAIN_CREATE_FIELDS = tuple(f.name for f in fields_of(CreateOptions))
TRAIN_OPTION_FIELDS = tuple(f.name for f in fields_of(TrainOptions))


def hypernetwork_choices(panel: Panel) -> List[str]:
    """NEW, then every card name in the folder."""
    try:
        return [NEW] + panel.state.card_names()
    except Exception:  # a missing folder lists nothing rather than breaking the tab
        return [NEW]


def train_fields(hypernetwork: str, create_values: Sequence, option_values: Sequence,
                 use_txt2img: bool = False, txt2img_values: Sequence = ()) -> dict:
    """The Train tab's inputs as one actions.start_training request."""
    fields = cleaned(TRAIN_OPTION_FIELDS, option_values)
    if use_txt2img and txt2img_values:
        fields.update(cleaned(TXT2IMG_PREVIEW_FIELDS, txt2img_values))
    if hypernetwork and hypernetwork != NEW:
        fields["hypernetwork"] = hypernetwork
    else:
        create = cleaned(TRAIN_CREATE_FIELDS, create_values)
        if not create.get("dims"):
            create.pop("dims", None)  # none ticked: the loaded model's widths
        fields.update(create)
    return fields


def status_html(status: Optional[dict]) -> str:
    """One status paragraph for a job snapshot."""
    if not status or status.get("job_id") is None:
        return message_html("No training job yet.")
    s = status
    parts = [f"{s['name']}: {s['state']}", f"step {s['step']}/{s['total']}"]
    if s.get("loss") is not None:
        parts.append(f"loss {s['loss']:.5f}")
    if s.get("val_loss") is not None:
        parts.append(f"validation loss {s['val_loss']:.5f} (step {s['val_step']})")
    if s.get("prompt_kept") is not None:
        parts.append(f"prompt kept {s['prompt_kept']:.2f}, style {s['style']:.3f} (step {s['probe_step']})")
    if s.get("learn_rate") is not None:
        parts.append(f"lr {s['learn_rate']:.2e}")
    if s.get("it_per_s"):
        parts.append(f"{s['it_per_s']:.2f} it/s")
    text = ", ".join(parts)
    if s.get("output") and s["state"] in ("completed", "interrupted", "already-done"):
        text += f". Saved {s['output']}"
    elif s.get("last_saved"):
        text += f". Last saved {s['last_saved']}"
    if s.get("suggested"):
        text += (f". Suggested copy: {s['suggested']} (step {s['suggested_step']}; Compare saved copies preselects "
                 "it for Keep as final file)")
    notes = "".join(f". Note: {note}" for note in s.get("notes") or [])
    if s.get("timing"):
        notes += f". {s['timing'][0].upper()}{s['timing'][1:]}"
    if s.get("error"):
        return message_html(f"{text}{notes}. Error: {s['error']}", error=True)
    return message_html(text + notes)


def loss_image(status: Optional[dict]):
    """The loss curve so far as a PIL image, or None before the first step."""
    from ..train.plot import columns, render_loss
    status = status or {}
    points = status.get("losses") or []
    if not points:
        return None
    steps, losses = zip(*points)
    return render_loss(list(steps), list(losses), title=f"{status['name']} loss", size=(640, 320),
                       validation=columns(status.get("val_losses") or []),
                       probes=status.get("probes") or (), suggested=status.get("suggested_step"))


def progress_outputs(status: Optional[dict]):
    """(status HTML, loss image, preview paths) for a job snapshot."""
    return status_html(status), loss_image(status), list((status or {}).get("previews") or [])


def follow(job, poll_seconds: float = 1.0):
    """Yield progress_outputs on every change of the job until it finishes (a gradio generator handler)."""
    last = None
    while True:
        job.wait_for(lambda st, last=last: st != last, timeout=poll_seconds)
        status = job.snapshot()
        if status != last:
            last = status
            yield progress_outputs(status)
        if status["finished"] is not None:
            return


def train_click(panel: Panel, hypernetwork, use_txt2img, *values):
    """Train button (a generator): start the job, then stream its progress."""
    n_create, n_opts = len(TRAIN_CREATE_FIELDS), len(TRAIN_OPTION_FIELDS)
    create_values, option_values = values[:n_create], values[n_create:n_create + n_opts]
    txt2img_values = values[n_create + n_opts:]
    try:
        fields = train_fields(hypernetwork, create_values, option_values, bool(use_txt2img), txt2img_values)
        job = actions.start_training(panel.state, fields, runtime=panel.runtime)
    except actions.ActionError as exc:
        yield error_html(exc), None, []
        return
    yield from follow(job)


def watch_click(panel: Panel):
    """Show progress of the running (or last) job, e.g. after reloading the page."""
    job = actions.latest_job(panel.state)
    if job is None:
        yield progress_outputs(None)
        return
    yield from follow(job)


def interrupt_click(panel: Panel) -> str:
    job = actions.running_job(panel.state)
    if job is None:
        return message_html("No training job is running.")
    job.interrupt()
    return message_html(f"Interrupting {job.status.name}: it finishes the current step and saves.")


def build_train_tab(gr, panel: Panel):
    """The Train tab's contents, inside the caller's Tab/Blocks; returns a dict of its components.

    Left: the hypernetwork to train, the essential fields, then every other option in closed accordions. Right
    (elem_id hypernet_train_side, kept in view while the form scrolls; the webui's page script moves it into the
    webui's own right column): the buttons, the status, the live loss plot, the previews and the comparison of
    saved copies."""
    c: Dict[str, Any] = {}  # gradio components
    defaults = {"log_dir": panel.log_dir or actions.default_log_dir(panel.state)}
    option_comps: Dict[str, object] = {}

    def options(fields) -> None:
        for f in fields:
            option_comps[f.name] = component(gr, f, "hypernet_train", default=defaults.get(f.name))

    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            with gr.Row(elem_classes=["hypernet-pick"]):
                c["hypernetwork"] = gr.Dropdown(choices=hypernetwork_choices(panel), value=NEW,
                                                label="Hypernetwork to train", scale=4, min_width=240,
                                                info="continue training a file, or create a new one below",
                                                elem_id="hypernet_train_hypernetwork")
                c["refresh"] = gr.Button("Refresh list", scale=1, min_width=100, elem_id="hypernet_train_refresh")
            with gr.Accordion("New hypernetwork", open=True):
                c["create"] = {}
                new_fields = fields_of(CreateOptions)
                for f in [f for f in new_fields if is_essential(f)]:
                    c["create"][f.name] = _new_component(gr, f)
                with gr.Accordion("Architecture", open=False):
                    for f in [f for f in new_fields if not is_essential(f)]:
                        c["create"][f.name] = _new_component(gr, f)
                c["create"] = [c["create"][f.name] for f in new_fields]
            options([f for f in fields_of(TrainOptions) if is_essential(f)])
            for group, title in GROUPS:
                with gr.Accordion(title, open=False):
                    options([f for f in fields_of(TrainOptions) if f.metadata.get("group") == group
                             and not is_essential(f)])
                    if group == "preview":
                        c["use_txt2img"] = gr.Checkbox(value=panel.txt2img_preview is not None,
                                                       visible=panel.txt2img_preview is not None,
                                                       label="Read preview settings from txt2img",
                                                       elem_id="hypernet_train_use_txt2img")
            c["options"] = [option_comps[name] for name in TRAIN_OPTION_FIELDS]
        with gr.Column(scale=2, min_width=280, elem_id="hypernet_train_side", elem_classes=["hypernet-side"]):
            with gr.Row():
                c["train"] = gr.Button("Train hypernetwork", variant="primary", elem_id="hypernet_train_button")
                c["interrupt"] = gr.Button("Interrupt training", elem_id="hypernet_train_interrupt")
                c["watch"] = gr.Button("Show progress", elem_id="hypernet_train_watch")
            c["status"] = gr.HTML(status_html(None), elem_id="hypernet_train_status")
            c["loss"] = gr.Image(label="Loss", type="pil", interactive=False, elem_id="hypernet_train_loss")
            c["gallery"] = gr.Gallery(label="Previews", elem_id="hypernet_train_previews", columns=4)
            from . import compare_panel  # it builds on this module
            c["compare"] = compare_panel.build(gr, panel)
    return c


def _new_component(gr, f: dataclasses.Field):
    """A creation field on the Train tab: empty name and no ticked widths mean "from the data / the model"."""
    return component(gr, f, "hypernet_train_new", default="" if f.name == "name" else ([] if f.name == "dims"
                                                                                        else None),
                     label=f"{name_label(f.name)} of the new hypernetwork")


def wire(gr, panel: Panel, create, train) -> dict:
    """Connect the buttons of both tabs (create = build_create_tab's result, train = build_train_tab's); returns
    the "create" and "train" click events, for callers that chain more (.then)."""
    comps, button, output = create

    def on_create(*values):
        message, _ = create_click(panel, *values)
        return message, gr.update(choices=hypernetwork_choices(panel))

    # Short handlers skip the queue: a running Train generator holds a queue worker (the only one in the
    # standalone UI), and Interrupt must never wait behind the job it stops.
    created = button.click(on_create, inputs=[comps[n] for n in CREATE_INPUTS],
                           outputs=[output, train["hypernetwork"]], queue=False)
    train["refresh"].click(lambda: gr.update(choices=hypernetwork_choices(panel)), inputs=[],
                           outputs=[train["hypernetwork"]], queue=False)
    txt2img = list(panel.txt2img_preview or [])
    outputs = [train["status"], train["loss"], train["gallery"]]
    trained = train["train"].click(functools.partial(train_click, panel),
                                   inputs=[train["hypernetwork"], train["use_txt2img"], *train["create"],
                                           *train["options"], *txt2img], outputs=outputs)
    train["watch"].click(functools.partial(watch_click, panel), inputs=[], outputs=outputs)
    train["interrupt"].click(functools.partial(interrupt_click, panel), inputs=[], outputs=[train["status"]],
                             queue=False)
    from . import compare_panel
    compare_panel.wire(gr, panel, train["compare"])
    return {"create": created, "train": trained}
