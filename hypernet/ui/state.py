"""The runtime state a UI acts on, owned by one object: LibraryState, for any host.

It holds the Library over a hypernetwork folder, the Attachment currently hooked into the loaded UNet with the list
of what it applies, cached file facts and hashes, and the training jobs. What depends on the host is a handful of
hooks with host-agnostic defaults: `folder()`, `loaded_model()`, `unet_of()`, `refresh()`, `hash_source()` and
`data_folder()`. The webui's HypernetState (webui/state.py) and the standalone UI's state override them; nothing
here imports the webui's `modules`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

from ..attach import Attachment, Compatibility, attach, compatibility, find_attention
from ..errors import HypernetError, NotFoundError
from ..library import Entry, Library
from ..tags import Strength
from . import metadata as _metadata
from .settings import value

log = logging.getLogger("hypernet")


@dataclass(frozen=True)
class Applied:
    """One hypernetwork in the current attachment: the name as the tag wrote it, its file, its strength."""

    name: str
    entry: Entry
    strength: Strength


def _stamp(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


class LibraryState:
    """A folder of hypernetworks, what is hooked into the model, and the training jobs; hooks say what the host has.

    `log_folder` (None: the log_dir setting, else <data_folder()>/textual_inversion) and `allow_any_path` say where a
    UI may let training write."""

    log_folder: Optional[str] = None
    allow_any_path: bool = False

    def __init__(self, folder: Optional[str] = None):
        self._folder = folder
        self._library: Optional[Library] = None
        self._library_folder: Optional[str] = None
        self.attachment: Optional[Attachment] = None
        self.applied: List[Applied] = []
        self.warnings: List[str] = []
        self._attach_key: Optional[tuple] = None
        self._facts: Dict[str, Tuple[Tuple[int, int], Any]] = {}  # path -> (stamp, facts or error)
        self._hashes: Dict[str, Tuple[Tuple[int, int], str]] = {}
        self._sites: Optional[Tuple[weakref.ref, list]] = None
        self.jobs: Dict[str, object] = {}
        self.compare_stop = threading.Event()   # a Stop button or request for the running comparison
        self._pins: Dict[str, str] = {}  # tag name -> a file outside the folder (a saved copy an axis sweeps)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ folder, library
    def folder(self) -> str:
        """The hypernetwork folder given to the constructor."""
        if self._folder is None:
            raise HypernetError("no hypernetwork folder was given")
        return self._folder

    def data_folder(self) -> str:
        """Where the default log folder (textual_inversion) goes: the current directory."""
        return os.getcwd()

    @property
    def library(self) -> Library:
        folder = self.folder()
        with self.lock:
            if self._library is None or self._library_folder != folder:
                self._library = Library(folder, cache_size=value("cache_size"))
                self._library_folder = folder
            self._library.cache_size = value("cache_size")
            return self._library

    def refresh(self) -> List[Entry]:
        """Rescan the folder."""
        return self.library.refresh()

    def resolve(self, name: str) -> Entry:
        """The file a tag names (exact, then case-insensitive; rescans on a miss and when the file found has
        gone since the last scan), else a pinned saved copy. NotFoundError names the folder and close matches."""
        try:
            return self.library.resolve(name)
        except NotFoundError:
            path = self._pins.get(name)
            if path is None or not os.path.isfile(path):
                raise
            st = os.stat(path)
            return Entry(name.rsplit("/", 1)[-1], path, name, st.st_size, st.st_mtime_ns)

    def pin(self, name: str, path: str) -> None:
        """Let tags call the file at `path` (outside the folder) `name` for the rest of this session."""
        with self.lock:
            self._pins[name] = os.path.abspath(path)

    def entries(self) -> List[Entry]:
        """One entry per network: a .pt and a .safetensors of the same stem in one folder count once."""
        return self.library.networks()

    def card_name(self, entry: Entry, entries: Optional[List[Entry]] = None) -> str:
        """What a tag writes for this file: the stem, or the relative path when two folders share the stem."""
        entries = self.entries() if entries is None else entries
        if sum(1 for e in entries if e.name == entry.name) > 1:
            return os.path.splitext(entry.relpath)[0]
        return entry.name

    def card_names(self) -> List[str]:
        entries = self.entries()
        return [self.card_name(e, entries) for e in entries]

    # ------------------------------------------------------------------------------------------ the loaded model
    def loaded_model(self, load: bool = False):
        """The host's current model; None here (no host model)."""
        return None

    @staticmethod
    def unet_of(model):
        """The UNet of a model: a diffusers pipeline's `.unet`."""
        return getattr(model, "unet", None)

    def sites(self, unet) -> list:
        with self.lock:
            if self._sites is None or self._sites[0]() is not unet:
                self._sites = (weakref.ref(unet), find_attention(unet))
            return self._sites[1]

    def model_changed(self) -> None:
        """A new checkpoint: hooks on the old UNet go, cached fits are recomputed."""
        self.detach()
        with self.lock:
            self._sites = None

    # ------------------------------------------------------------------------------------------ applying
    def apply(self, unet, stack: list, applied: List[Applied]) -> List[str]:
        """Hook `stack` [(Hypernetwork, strength)] into `unet`, replacing the previous attachment; returns the
        compatibility warnings. The same stack on the same UNet keeps its hooks."""
        with self.lock:
            if not stack or unet is None:
                self.detach()
                return []
            key = (id(unet), tuple((id(hn), repr(s)) for hn, s in stack))
            current = self.attachment
            if current is not None and current.active and current.model_ref() is unet and key == self._attach_key:
                self.applied = list(applied)
                return list(self.warnings)
            self.detach()
            self.attachment = attach(unet, stack, warn=False)
            self._attach_key = key
            self.applied = list(applied)
            # Name each file as its tag did: the name stored inside a file (e.g. "foo" in foo-500.pt) misleads.
            self.warnings = [text for text in (dataclasses.replace(report, hypernetwork=a.name).warning
                                               for report, a in zip(self.attachment.reports, applied)) if text]
            return list(self.warnings)

    def detach(self) -> None:
        with self.lock:
            if self.attachment is not None:
                self.attachment.remove()
            self.attachment = None
            self._attach_key = None
            self.applied = []
            self.warnings = []

    # ------------------------------------------------------------------------------------------ facts about files
    def describe(self, entry: Entry) -> dict:
        """Metadata of a file, read without its weights (cached while the file is unchanged).

        A file that would not load raises its HypernetError; the console gets one line for it per change of the
        file, however often cards are listed."""
        stamp = _stamp(entry.path)
        with self.lock:
            hit = self._facts.get(entry.path)
        if hit is None or hit[0] != stamp:
            try:
                hit = (stamp, _metadata.read(entry.path))
            except HypernetError as exc:
                hit = (stamp, exc)
                log.warning("%s", exc)
            with self.lock:
                self._facts[entry.path] = hit
        if isinstance(hit[1], HypernetError):
            raise hit[1]
        return dict(hit[1])

    def fit(self, facts: dict, unet) -> Optional[Compatibility]:
        """How a file with these facts meets `unet`; None without a model."""
        if unet is None:
            return None
        stand_in = SimpleNamespace(name=facts.get("name") or "hypernetwork", dims=list(facts["dims"]))
        return compatibility(stand_in, unet, self.sites(unet))

    # ------------------------------------------------------------------------------------------ hashes
    def hash_source(self, entry: Entry, compute: bool) -> Optional[str]:
        """The file's sha256 where the host keeps hashes: here the Library, which hashes only when `compute`."""
        return self.library.sha256(entry) if compute else None

    def sha256(self, entry: Entry, compute: bool = True) -> Optional[str]:
        """The file's sha256 from our cache or hash_source(); computed only when `compute`. None when unknown."""
        stamp = _stamp(entry.path)
        with self.lock:
            hit = self._hashes.get(entry.path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        digest = self.hash_source(entry, compute)
        if digest:
            with self.lock:
                self._hashes[entry.path] = (stamp, digest)
        return digest

    def shorthash(self, entry: Entry, compute: bool = True) -> str:
        digest = self.sha256(entry, compute)
        return digest[:10] if digest else ""

    def find_by_hash(self, short: str) -> Optional[Entry]:
        """The file whose sha256 starts with `short`: cached hashes first, then hashing the rest."""
        short = short.strip().lower()
        if not short:
            return None
        entries = self.entries()
        for compute in (False, True):
            for entry in entries:
                try:
                    digest = self.sha256(entry, compute=compute)
                except OSError:  # gone since the last scan
                    continue
                if digest and digest.startswith(short):
                    return entry
        return None

    # ------------------------------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Remove hooks and ask running training jobs to stop (they save and exit)."""
        self.detach()
        for job in list(self.jobs.values()):
            stop = getattr(job, "stop", None)
            if stop is not None:
                stop.set()
