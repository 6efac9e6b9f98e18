""""Hypernet strength" and "Hypernet file" axes for the webui's X/Y/Z plot script.

The plot lost its hypernetwork axes when hypernetworks became extra networks. These axes rewrite the prompt's
<hypernet:...> tags, so every cell's infotext shows what was applied: the strength axis sets the strength of every
hypernet tag; the file axis makes the first tag name another file, or appends <hypernet:file:1> when the prompt has
none. Its choices are the cards and the saved copies of training runs in the log folder, named
<date>/<run>/<copy> (those resolve for this session only), so a user can sweep a run's copies with the webui's own
grid. Registered from on_before_ui, as other extensions register theirs; without the script nothing happens.
"""
from __future__ import annotations

import logging

from ..errors import HypernetError
from ..tags import strength_value, with_file, with_strength
from ..ui import actions
from .state import get_state

log = logging.getLogger("hypernet")
STRENGTH_LABEL = "Hypernet strength"
FILE_LABEL = "Hypernet file"
PENDING = "hypernet_axis_strength"  # a strength set before any tag exists; the file axis uses it when appending


def find_xyz_module():
    """The loaded xyz_grid script's module (its file name is its module name), or None."""
    from modules import scripts
    for data in getattr(scripts, "scripts_data", []):
        if getattr(data.script_class, "__module__", "") == "xyz_grid.py" and getattr(data, "module", None):
            return data.module
    return None


def apply_strength(p, x, xs) -> None:
    """Set every hypernet tag's strength to x; remembered for a tag the file axis adds later."""
    p.prompt, count = with_strength(p.prompt, float(x))
    setattr(p, PENDING, float(x))
    if not count:
        log.info("hypernet: %s %s with no <hypernet:...> tag in the prompt yet", STRENGTH_LABEL, x)


def file_choices() -> list:
    """Card names, then every saved copy of the log folder's runs."""
    state = get_state()
    try:
        cards = state.card_names()
    except HypernetError:
        cards = []
    return cards + [name for name in actions.saved_copy_names(state) if name not in cards]


def resolve_file(name: str) -> str:
    """The tag name for an axis value: a card as it is, a saved copy pinned under its <date>/<run>/<copy> name."""
    state = get_state()
    if name in state.card_names():
        return name
    copies = actions.saved_copy_names(state)
    if name in copies:
        state.pin(name, copies[name])
        return name
    raise RuntimeError(f"{FILE_LABEL}: no hypernetwork or saved copy called {name!r}; pick one from the list")


def apply_file(p, x, xs) -> None:
    """Make the first hypernet tag name x, or append <hypernet:x:strength>."""
    p.prompt = with_file(p.prompt, resolve_file(str(x)), getattr(p, PENDING, 1.0))


def confirm_strengths(p, xs) -> None:
    """Every strength valid before the first image (the webui calls this once per axis)."""
    for x in xs:
        strength_value(str(x))


def confirm_files(p, xs) -> None:
    for x in xs:
        resolve_file(str(x))


def axis_options(xyz) -> list:
    """Our two AxisOptions, built from the script's own class so its UI and run() take them as theirs."""
    return [xyz.AxisOption(STRENGTH_LABEL, float, apply_strength, confirm=confirm_strengths),
            xyz.AxisOption(FILE_LABEL, str, apply_file, format_value=xyz.format_value, confirm=confirm_files,
                           cost=0.2, choices=file_choices)]


def register_axes() -> bool:
    """Add the axes to the X/Y/Z plot once; False when the script is not loaded."""
    xyz = find_xyz_module()
    if xyz is None:
        return False
    if not any(getattr(o, "label", None) in (STRENGTH_LABEL, FILE_LABEL) for o in xyz.axis_options):
        xyz.axis_options.extend(axis_options(xyz))
    return True
