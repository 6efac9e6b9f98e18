"""modules/ui_extra_networks.py: the cards pages.

extra_pages is the list of registered pages (register_page appends and recomputes allowed_dirs from every page's
allowed_directories_for_previews()); ExtraNetworksPage(title) gives the helpers a page uses. create_html renders the
cards the way the webui does where it matters: items keyed by name, item["metadata"] stored in page.metadata,
quote_js(item["local_preview"]) (which fails on None) and the prompt expression in the click handler.
"""
import html
import json
import os
import urllib.parse
from pathlib import Path

from modules import shared

extra_pages = []
allowed_dirs = set()
default_allowed_preview_extensions = ["png", "jpg", "jpeg", "webp", "gif"]


def allowed_preview_extensions():
    return set(default_allowed_preview_extensions) | {shared.opts.samples_format}


def register_page(page):
    extra_pages.append(page)
    allowed_dirs.clear()
    allowed_dirs.update(set(sum([x.allowed_directories_for_previews() for x in extra_pages], [])))


def quote_js(s):
    s = s.replace('\\', '\\\\')
    s = s.replace('"', '\\"')
    return f'"{s}"'


class ExtraNetworksPage:
    def __init__(self, title):
        self.title = title
        self.name = title.lower()
        self.extra_networks_tabname = self.name.replace(" ", "_")
        self.allow_prompt = True
        self.allow_negative_prompt = False
        self.metadata = {}
        self.items = {}

    def refresh(self):
        pass

    def read_user_metadata(self, item, use_cache=True):
        metadata = extra_networks_user_metadata(item.get("filename"))
        desc = metadata.get("description", None)
        if desc is not None:
            item["description"] = desc
        item["user_metadata"] = metadata

    def link_preview(self, filename):
        quoted = urllib.parse.quote(filename.replace('\\', '/'))
        return f"./sd_extra_networks/thumb?filename={quoted}&mtime={os.path.getmtime(filename)}"

    def search_terms_from_path(self, filename, possible_directories=None):
        abspath = os.path.abspath(filename)
        dirs = possible_directories if possible_directories is not None else self.allowed_directories_for_previews()
        for parentdir in dirs:
            parentdir = os.path.dirname(os.path.abspath(parentdir))
            if abspath.startswith(parentdir):
                return os.path.relpath(abspath, parentdir)
        return ""

    def create_item_html(self, tabname, item):
        onclick = item.get("onclick") or html.escape(
            f"cardClicked('{tabname}', {item['prompt']}, {item.get('negative_prompt', chr(39) * 2)}, false);")
        search = "".join(f"<span class='hidden search_terms'>{t}</span>" for t in item.get("search_terms", []))
        return (f"<div class='card' onclick=\"{onclick}\" data-name={quote_js(item['name'])}"
                f" data-local-preview={quote_js(item['local_preview'])}>{search}"
                f"<span class='description'>{html.escape(item.get('description') or '')}</span></div>")

    def create_html(self, tabname, *, empty=False):
        self.metadata = {}
        items_list = [] if empty else self.list_items()
        self.items = {x["name"]: x for x in items_list}
        for item in self.items.values():
            metadata = item.get("metadata")
            if metadata:
                self.metadata[item["name"]] = metadata
            if "user_metadata" not in item:
                self.read_user_metadata(item)
        return "".join(self.create_item_html(tabname, item) for item in self.items.values())

    def create_item(self, name, index=None):
        raise NotImplementedError()

    def list_items(self):
        raise NotImplementedError()

    def allowed_directories_for_previews(self):
        return []

    def get_sort_keys(self, path):
        pth = Path(path)
        st = os.stat(path)
        return {"date_created": int(st.st_mtime), "date_modified": int(st.st_ctime), "name": pth.name.lower(),
                "path": str(pth).lower()}

    def find_preview(self, path):
        for ext in sorted(allowed_preview_extensions()):
            for file in (f"{path}.{ext}", f"{path}.preview.{ext}"):
                if os.path.exists(file):
                    return self.link_preview(file)
        return None

    def find_description(self, path):
        for file in (f"{path}.txt", f"{path}.description.txt"):
            if os.path.exists(file):
                try:
                    with open(file, "r", encoding="utf-8", errors="replace") as f:
                        return f.read()
                except OSError:
                    pass
        return None


def extra_networks_user_metadata(filename):
    """extra_networks.get_user_metadata: <stem>.json beside the file."""
    if filename is None:
        return {}
    path = os.path.splitext(filename)[0] + ".json"
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf8") as fh:
        return json.load(fh)


def get_metadata(page: str = "", item: str = ""):
    """/sd_extra_networks/metadata: the card's metadata as JSON text."""
    page = next(iter([x for x in extra_pages if x.name == page]), None)
    metadata = page.metadata.get(item) if page is not None else None
    return {} if metadata is None else {"metadata": json.dumps(metadata, indent=4, ensure_ascii=False)}


def initialize():
    extra_pages.clear()


def register_default_pages():
    from modules.ui_extra_networks_hypernets import ExtraNetworksPageHypernetworks
    register_page(StandInPage("Textual Inversion"))
    register_page(ExtraNetworksPageHypernetworks())
    register_page(StandInPage("Checkpoints"))


class StandInPage(ExtraNetworksPage):
    """Stands in for the Textual Inversion and Checkpoints pages (their content does not matter here)."""

    def list_items(self):
        return iter(())

