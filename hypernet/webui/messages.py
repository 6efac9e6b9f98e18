"""Warnings a user must see: under the generated image, in the console, and optionally as a popup.

How the webui (v1.10.1) shows such text, read in its source:
- `StableDiffusionProcessing.comment(text)` (modules/processing.py:296) stores text in `p.comments`; `Processed`
  joins them (processing.py:525) and txt2img/img2img show them under the image
  (`plaintext_to_html(processed.comments, classname="comments")`, modules/txt2img.py:120, img2img.py:253).
- `sd_hijack.model_hijack.comments` is cleared at the start of process_images and copied into `p.comment` once per
  batch, after extra networks are activated (processing.py:896, 979-980). Lora puts "Lora not found: ..." there
  (extensions-builtin/Lora/networks.py:358-364), printing to the console and calling `gr.Warning` only when its
  opt-in settings say so. The hires-fix pass activates extra networks again later (processing.py:1435-1437), after
  that copy, so we call `p.comment` directly and use model_hijack.comments only for a `p` without `comment`.
- Console: the webui configures no logging handler unless --loglevel is given (modules/logging_config.py), so
  register() gives the "hypernet" logger one in that case; `errors.report` (modules/errors.py:38) is for failures
  with a traceback.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("hypernet")
_HANDLER_FLAG = "_hypernet_console"


def ensure_console_handler() -> None:
    """Make warnings from the "hypernet" logger reach the console when nothing else is configured."""
    if logging.getLogger().handlers or any(getattr(h, _HANDLER_FLAG, False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[hypernet] %(levelname)s: %(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    log.addHandler(handler)
    # The webui configures the root logger later; propagating as well would print every warning twice.
    log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def warn(p, text: str) -> None:
    """Show `text` under the image of the generation `p` is making, and once per generation in the console."""
    text = text if text.startswith("Hypernet") else f"Hypernet: {text}"
    shown = False
    comment = getattr(p, "comment", None)
    if callable(comment):
        try:
            comment(text)
            shown = True
        except Exception:  # a processing object without a comments dict
            shown = False
    if not shown:
        try:
            from modules import sd_hijack
            if text not in sd_hijack.model_hijack.comments:
                sd_hijack.model_hijack.comments.append(text)
        except Exception:
            pass
    seen = _seen(p)
    if seen is None or text not in seen:
        if seen is not None:
            seen.add(text)
        log.warning(text)
        from ..ui.settings import value
        if value("warning_popup"):
            _popup(text)


def _seen(p):
    try:
        seen = getattr(p, "_hypernet_warned", None)
        if seen is None:
            seen = set()
            p._hypernet_warned = seen
        return seen
    except Exception:
        return None


def _popup(text: str) -> None:
    try:
        import gradio as gr
        gr.Warning(text)
    except Exception:  # outside a gradio event (API calls) there is nobody to show it to
        pass


def report_error(message: str) -> None:
    """A failure with the traceback of the exception being handled, the way the webui prints its own."""
    try:
        from modules import errors
        errors.report(message, exc_info=True)
    except ImportError:
        log.exception(message)
