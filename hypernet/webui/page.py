"""The "Hypernetworks" cards page, replacing the built-in one (modules/ui_extra_networks_hypernets.py).

Imported only from the webui entry point (it subclasses the webui's class at import time).

What the webui (v1.10.1, modules/ui_extra_networks.py) does with a card dict, which shapes what we return:
- `create_html` keys items by `item["name"]` and stores `item["metadata"]` in `page.metadata[name]`; the card then
  gets a metadata button, and /sd_extra_networks/metadata shows it as JSON (so it must be JSON-ready).
- `create_item_html` calls `quote_js(item["local_preview"])`, so local_preview must be a string, and builds the
  click handler from `item["prompt"]`, a JavaScript expression.
- `get_single_card` calls `create_item(name, enable_filter=False)`.
- `read_user_metadata` later overrides the description with `<stem>.json`'s "description" (the user metadata editor
  writes it); we read it too, so the API listing shows the same text.
"""
from __future__ import annotations

import os
from typing import Optional

from modules import ui_extra_networks
from modules.ui_extra_networks import quote_js

from ..library import Entry
from ..ui.cards import card_facts, face_warning, user_metadata
from ..ui.settings import value
from .settings import webui_option
from .state import HypernetState, get_state

TITLE = "Hypernetworks"


class ExtraNetworksPageHypernetworks(ui_extra_networks.ExtraNetworksPage):
    is_hypernet_extension_page = True  # recognised across a reload of this module

    def __init__(self, state: Optional[HypernetState] = None):
        super().__init__(TITLE)
        self._state = state

    @property
    def state(self) -> HypernetState:
        return self._state or get_state()

    def refresh(self):
        self.state.refresh()

    def create_item(self, name, index=None, enable_filter=True):
        state = self.state
        entries = state.entries()
        entry = next((e for e in entries if state.card_name(e, entries) == name), None)
        if entry is None:
            try:
                entry = state.resolve(name)
            except Exception:
                return None
        return self._item(entry, state.card_name(entry, entries), index, enable_filter)

    def _item(self, entry: Entry, name: str, index, enable_filter: bool) -> Optional[dict]:
        state = self.state
        model = state.loaded_model(load=False)
        unet = state.unet_of(model) if model is not None else None
        facts = card_facts(state, entry, unet)
        if enable_filter and value("hide_unfit") and facts.get("fits") is False:
            return None
        path = os.path.splitext(entry.path)[0]
        short = state.shorthash(entry, compute=value("card_hashes"))
        search_terms = [self.search_terms_from_path(entry.path) or entry.relpath]
        if short:
            search_terms.append(state.sha256(entry, compute=False) or short)
        # A refused or non-fitting file says so on its face, not only behind the metadata button.
        described = user_metadata(path).get("description") or self.find_description(path) or facts.get("notes")
        description = " · ".join(str(text) for text in (face_warning(facts), described) if text)
        fmt = webui_option("samples_format", "png") or "png"
        return {
            "name": name,
            "filename": entry.path,
            "shorthash": short,
            "preview": self.find_preview(path) or "",
            "description": str(description),
            "search_terms": search_terms,
            "prompt": quote_js(f"<hypernet:{name}:") + " + opts.extra_networks_default_multiplier + " + quote_js(">"),
            "local_preview": f"{path}.preview.{fmt}",
            "metadata": facts,
            "sort_keys": {"default": index if index is not None else 0, **self.get_sort_keys(entry.path)},
            "sd_version": facts.get("made_for") or "Unknown",
        }

    def list_items(self):
        state = self.state
        entries = state.entries()  # a list: the folder may change while the page renders
        for index, entry in enumerate(entries):
            if not os.path.exists(entry.path):  # removed since the last scan; refresh() forgets it
                continue
            item = self._item(entry, state.card_name(entry, entries), index, True)
            if item is not None:
                yield item

    def allowed_directories_for_previews(self):
        return [self.state.folder()]


def _is_ours(page) -> bool:
    return bool(getattr(page, "is_hypernet_extension_page", False))


def is_builtin_page(page) -> bool:
    """The webui's own Hypernetworks page (or any other one titled so that is not ours)."""
    if _is_ours(page):
        return False
    return (type(page).__module__.endswith("ui_extra_networks_hypernets")
            or getattr(page, "title", None) == TITLE)


def install_page(page: ExtraNetworksPageHypernetworks) -> None:
    """Take the built-in page's place in ui_extra_networks.extra_pages (same tab position), or append."""
    pages = ui_extra_networks.extra_pages
    position = next((i for i, p in enumerate(pages) if is_builtin_page(p) or _is_ours(p)), None)
    pages[:] = [p for p in pages if not (is_builtin_page(p) or _is_ours(p))]
    ui_extra_networks.register_page(page)  # also recomputes the folders previews may be served from
    if position is not None and pages[-1] is page:
        pages.insert(min(position, len(pages) - 1), pages.pop())
