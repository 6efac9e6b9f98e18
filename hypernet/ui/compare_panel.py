"""The Train tab's "Compare saved copies" panel: render a run's copies in one grid, keep one as the final file.

Shared by the webui, Forge and the standalone UI; the work is done by actions.compare_copies / keep_copy, which the
HTTP API calls too.
"""
from __future__ import annotations

import functools
import html
from typing import Any, Dict, List, Optional

from ..config import CompareOptions
from . import actions
from .widgets import Panel, cleaned, component, error_html, fields_of, is_essential, message_html, name_label

COMPARE_FIELDS = tuple(f.name for f in fields_of(CompareOptions))


def run_choices(panel: Panel) -> List[str]:
    """The run folders of the log folder, newest first (a missing folder lists nothing)."""
    try:
        return actions.run_folders(panel.state)
    except OSError:
        return []


def current_run(panel: Panel) -> Optional[str]:
    """The latest job's run folder when it has one, else the newest run folder."""
    job = actions.latest_job(panel.state)
    run = job.status.run_dir if job is not None else None
    choices = run_choices(panel)
    return run if run in choices else (choices[0] if choices else None)


def comparison_html(result) -> str:
    """What the grid shows, one line per row (its label's figures); the seed, and where it stopped."""
    lines = [f"{html.escape(c.path)}: step {c.step}"
             + (f", validation loss {c.val_loss:.5f}" if c.val_loss is not None else "")
             + (f", prompt kept {c.prompt_kept:.2f}, style {c.style:.3f}" if c.prompt_kept is not None else "")
             + (" (suggested: the strongest style that keeps the prompt)" if c.suggested else "")
             for c in result.copies]
    done, total = result.cells
    stopped = "" if result.complete else f"<br>Stopped after {done} of {total} images; the grid shows those."
    written = f"<br>Grid saved to {html.escape(result.files[-1])}" if result.files else ""
    return "<p>" + "<br>".join(lines) + f"<br>Seed {result.seed}" + stopped + written + "</p>"


def compare_click(panel: Panel, gr, run, *values, progress=None):
    """Compare button: (message HTML, grid image, choices of the copy to keep). `progress`: gradio's Progress,
    which shows images done of total."""
    shown = None if progress is None else (lambda done, total: progress((done, total), desc="Comparing copies",
                                                                        unit="images"))
    try:
        result = actions.compare_copies(panel.state, {"run": run, **cleaned(COMPARE_FIELDS, values)}, panel.runtime,
                                        shown, fresh=False)
    except actions.ActionError as exc:
        return error_html(exc), None, gr.update()
    paths = [c.path for c in result.copies]
    suggested = next((c.path for c in result.copies if c.suggested), None)  # preselected for Keep as final file
    return comparison_html(result), result.image, gr.update(choices=paths, value=suggested)


def keep_click(panel: Panel, copy, name, overwrite) -> str:
    """Keep button: copy the chosen copy into the hypernetwork folder."""
    if not copy:
        return message_html("Choose the copy to keep first (compare the run to list its copies).", error=True)
    try:
        return message_html(actions.keep_copy(panel.state, {"file": copy, "name": name, "overwrite": overwrite})["info"])
    except actions.ActionError as exc:
        return error_html(exc)


def build(gr, panel: Panel) -> Dict[str, Any]:
    """The panel's components (inside the caller's column), closed until opened."""
    c: Dict[str, Any] = {}  # gradio components
    with gr.Accordion("Compare saved copies", open=False, elem_id="hypernet_compare"):
        with gr.Row(elem_classes=["hypernet-pick"]):
            c["run"] = gr.Dropdown(choices=run_choices(panel), value=current_run(panel), label="Run", scale=4,
                                   info="a training run folder; its numbered copies become the rows",
                                   elem_id="hypernet_compare_run")
            # The newest run at each start, not the one the host's ui-config.json saw first.
            c["run"].do_not_save_to_config = True
            c["refresh"] = gr.Button("Refresh", scale=1, min_width=80, elem_id="hypernet_compare_refresh")
        fields = fields_of(CompareOptions)
        inputs = {f.name: _input(gr, f) for f in fields if is_essential(f)}
        with gr.Accordion("Sampling", open=False):
            inputs.update({f.name: _input(gr, f) for f in fields if not is_essential(f)})
        c["inputs"] = [inputs[name] for name in COMPARE_FIELDS]
        with gr.Row():
            c["compare"] = gr.Button("Compare saved copies", variant="primary", elem_id="hypernet_compare_button")
            c["stop"] = gr.Button("Stop comparing", elem_id="hypernet_compare_stop")
        c["message"] = gr.HTML(elem_id="hypernet_compare_message")
        c["grid"] = gr.Image(label="Saved copies", type="pil", interactive=False, elem_id="hypernet_compare_grid")
        c["copy"] = gr.Dropdown(choices=[], label="Copy to keep", elem_id="hypernet_compare_copy")
        c["name"] = gr.Textbox(label="Name in the hypernetwork folder", placeholder="(the copy's own name)",
                               elem_id="hypernet_compare_name")
        c["overwrite"] = gr.Checkbox(label="Replace a file of that name", value=False,
                                     elem_id="hypernet_compare_overwrite")
        c["keep"] = gr.Button("Keep as final file", elem_id="hypernet_compare_keep")
        c["kept"] = gr.HTML(elem_id="hypernet_compare_kept")
    return c


def _input(gr, f):
    """A comparison option's input, labelled "Grid ..." (the Train tab has its own Seed, Steps, Width...)."""
    return component(gr, f, "hypernet_compare", label=f"Grid {name_label(f.name).lower()}")


def wire(gr, panel: Panel, c: Dict[str, Any]) -> None:
    """Connect the panel's buttons; Compare runs in the queue (it generates), the rest skip it."""
    c["refresh"].click(lambda: gr.update(choices=run_choices(panel), value=current_run(panel)), inputs=[],
                       outputs=[c["run"]], queue=False)
    def on_compare(progress=gr.Progress(), *values):  # noqa: B008  gradio finds Progress by a parameter's default
        return compare_click(panel, gr, *values, progress=progress)

    # The click clears old stops at once, outside the queue: a Stop pressed while the comparison still waits for
    # the queue (or the model) then stops it.
    c["compare"].click(lambda: actions.begin_compare(panel.state), inputs=[], outputs=[], queue=False).then(
        on_compare, inputs=[c["run"], *c["inputs"]], outputs=[c["message"], c["grid"], c["copy"]])
    c["stop"].click(lambda: actions.stop_compare(panel.state), inputs=[], outputs=[], queue=False)
    c["keep"].click(functools.partial(keep_click, panel), inputs=[c["copy"], c["name"], c["overwrite"]],
                    outputs=[c["kept"]], queue=False)
