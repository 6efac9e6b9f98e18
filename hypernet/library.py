"""A folder of hypernetwork files: listing, name resolution, an mtime-checked LRU cache, and hashes."""
from __future__ import annotations

import contextlib
import difflib
import os
import stat
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

from .bounds import MAX_PATH, brief
from .errors import FileFormatError, NotFoundError
from .fileformat.files import ST_SUFFIX, load, sha256_file
from .network import Hypernetwork

SUFFIXES = (".pt", ST_SUFFIX)
HINTED_MISSES = 20  # unknown names per generation that get "did you mean" hints


@dataclass(frozen=True)
class Entry:
    """One hypernetwork file in the library."""

    name: str        # file stem, what a tag names
    path: str        # absolute path
    relpath: str     # path relative to the library folder, with '/' separators
    size: int
    mtime_ns: int

    @property
    def format(self) -> str:
        return "safetensors" if self.path.lower().endswith(ST_SUFFIX) else "pt"


def _stat_key(path: str) -> Tuple[int, int]:
    """(mtime, size) of a regular file; a pipe, device or folder is refused, as opening a pipe blocks forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FileFormatError(path, "is not a regular file (a pipe, device or folder), so it is never read")
    return st.st_mtime_ns, st.st_size


def _first_visit(directory: str, seen: set) -> bool:
    """Whether `directory` (a link followed) is readable and not yet in `seen`, which then records it."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _walk(folder: str) -> Iterator[Tuple[str, List[str]]]:
    """(directory, file names) for each real directory under `folder` once, in sorted order.

    Symlinked folders are followed after the real tree, so a real folder keeps its own path, and a link loop or a
    second link to a folder already seen adds nothing.
    """
    seen: set = set()
    pending = deque([folder])
    while pending:
        top = pending.popleft()
        if not _first_visit(top, seen):
            continue
        for root, dirs, files in os.walk(top):
            shown = sorted(d for d in dirs if not d.startswith("."))
            pending.extend(os.path.join(root, d) for d in shown if os.path.islink(os.path.join(root, d)))
            dirs[:] = [d for d in shown if not os.path.islink(os.path.join(root, d))
                       and _first_visit(os.path.join(root, d), seen)]
            yield root, files


def one_per_network(entries: List[Entry]) -> List[Entry]:
    """Entries with a .pt and a .safetensors of the same stem in one folder counted once, as the safetensors copy.

    Both are one network in two formats (e.g. after `convert`); the safetensors copy needs no unpickling.
    """
    out: List[Entry] = []
    seen: Dict[str, int] = {}
    for entry in entries:
        key = os.path.join(os.path.dirname(entry.path), entry.name)
        if key not in seen:
            seen[key] = len(out)
            out.append(entry)
        elif entry.format == "safetensors":
            out[seen[key]] = entry
    return out


def _name_index(entries: List[Entry]) -> Dict[Tuple[bool, str], List[Entry]]:
    """(folded, name) -> the entries a tag writing that name means, for each name a tag may use (the stem, the
    relative path with and without its suffix), exactly and case-folded, in listing order."""
    index: Dict[Tuple[bool, str], List[Entry]] = {}
    for entry in entries:
        names = {entry.name, os.path.splitext(entry.relpath)[0], entry.relpath}
        for fold in (False, True):
            for key in {n.lower() if fold else n for n in names}:
                index.setdefault((fold, key), []).append(entry)
    return index


class Library:
    """Hypernetworks under one or more folders, scanned recursively; loaded files cached by path and mtime."""

    def __init__(self, *folders, cache_size: int = 4):
        self.folders = [Path(f) for f in folders]
        self.cache_size = max(0, int(cache_size))
        self._entries: List[Entry] = []
        self._index: Dict[Tuple[bool, str], List[Entry]] = {}
        self._cache: "OrderedDict[str, Tuple[Tuple[int, int], Hypernetwork]]" = OrderedDict()
        self._hashes: Dict[str, Tuple[Tuple[int, int], str]] = {}
        self._lock = threading.RLock()
        self._scans = threading.local()  # scans_left: rescans a miss may still make in this thread's generation
        self.refresh()

    # ------------------------------------------------------------------------------------------ listing
    def refresh(self) -> List[Entry]:
        """Rescan the folders; returns the entries sorted case-insensitively by relative path."""
        entries = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, files in _walk(str(folder)):
                for fname in files:
                    if fname.startswith(".") or not fname.lower().endswith(SUFFIXES):
                        continue
                    path = os.path.join(root, fname)
                    stem = os.path.splitext(fname)[0]
                    if stem == "None":  # the webui reserves it for "no hypernetwork"
                        continue
                    try:
                        mtime, size = _stat_key(path)
                    except (OSError, FileFormatError):
                        continue
                    rel = os.path.relpath(path, folder).replace(os.sep, "/")
                    entries.append(Entry(stem, os.path.abspath(path), rel, size, mtime))
        entries.sort(key=lambda e: e.relpath.lower())
        with self._lock:
            self._entries = entries
            self._index = _name_index(entries)
        return list(entries)

    @property
    def entries(self) -> List[Entry]:
        return list(self._entries)

    def names(self) -> List[str]:
        return sorted({e.name for e in self._entries}, key=str.lower)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self.entries)

    # ------------------------------------------------------------------------------------------ resolving
    def _matches(self, name: str, fold: bool) -> List[Entry]:
        """Entries whose stem, relative stem or relative path is `name` (case-folded with `fold`), in listing
        order: one lookup in the listing's index, however many files and tags there are."""
        key = name.replace("\\", "/")
        return list(self._index.get((fold, key.lower() if fold else key), []))

    def networks(self) -> List[Entry]:
        """One entry per network, in listing order (see one_per_network)."""
        return one_per_network(self._entries)

    @contextlib.contextmanager
    def one_scan(self):
        """While it lasts (one generation), names are resolved against one listing, rescanned at most once on a
        miss: a prompt of 10,000 unknown tags costs one folder scan, not 10,000. Nested uses share the outer one."""
        outer = getattr(self._scans, "left", None)
        if outer is None:
            self._scans.left, self._scans.misses = 1, 0
        try:
            yield self
        finally:
            if outer is None:
                del self._scans.left

    def _hint(self) -> bool:
        """Whether a miss may look for close names: outside a generation always, inside one for its first
        HINTED_MISSES misses (difflib costs about a millisecond a name)."""
        if getattr(self._scans, "left", None) is None:
            return True
        self._scans.misses += 1
        return self._scans.misses <= HINTED_MISSES

    def _rescan(self) -> None:
        """Rescan after a miss, unless this generation has rescanned already."""
        left = getattr(self._scans, "left", None)
        if left == 0:
            return
        if left is not None:
            self._scans.left = left - 1
        self.refresh()

    def resolve(self, name: str) -> Entry:
        """The one entry called `name`: exact match first, then case-insensitive; NotFoundError otherwise."""
        if len(name) > MAX_PATH or "\x00" in name:  # no file is called so; and close matches would cost seconds
            raise NotFoundError(f"no hypernetwork named {brief(name, 60)} ({len(name):,} characters)")
        for attempt in range(2):
            if attempt == 0 and any(not os.path.exists(e.path) for e in self._matches(name, True)):
                self._rescan()  # a file deleted since the last scan must not resolve
            for fold in (False, True):
                found = one_per_network(self._matches(name, fold))
                if len(found) == 1:
                    return found[0]
                if len(found) > 1:
                    paths = ", ".join(e.relpath for e in found)
                    raise NotFoundError(f"hypernetwork name {name!r} is ambiguous: {paths}; write the relative "
                                        "path instead, e.g. <hypernet:folder/name>, or rename one")
            if attempt == 0:
                self._rescan()  # a file added since the last scan should just work
        close = difflib.get_close_matches(name, self.names(), n=3) if self._hint() else []
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        where = ", ".join(str(f) for f in self.folders)
        raise NotFoundError(f"no hypernetwork named {name!r} in {where}.{hint}")

    # ------------------------------------------------------------------------------------------ loading
    def load(self, name_or_entry: Union[str, Entry]) -> Hypernetwork:
        """The loaded hypernetwork (never its .optim), reused only while the file's mtime and size are unchanged."""
        entry = name_or_entry if isinstance(name_or_entry, Entry) else self.resolve(name_or_entry)
        stamp = _stat_key(entry.path)
        with self._lock:
            hit = self._cache.get(entry.path)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(entry.path)
                return hit[1]
        hn = load(entry.path)
        with self._lock:
            if self.cache_size:
                self._cache[entry.path] = (stamp, hn)
                self._cache.move_to_end(entry.path)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return hn

    def cached_paths(self) -> List[str]:
        return list(self._cache.keys())

    # ------------------------------------------------------------------------------------------ hashes
    def sha256(self, name_or_entry: Union[str, Entry]) -> str:
        entry = name_or_entry if isinstance(name_or_entry, Entry) else self.resolve(name_or_entry)
        stamp = _stat_key(entry.path)
        hit = self._hashes.get(entry.path)
        if hit is None or hit[0] != stamp:
            hit = (stamp, sha256_file(entry.path))
            self._hashes[entry.path] = hit
        return hit[1]

    def shorthash(self, name_or_entry: Union[str, Entry]) -> str:
        """The webui's short hash (first 10 hex digits of sha256)."""
        return self.sha256(name_or_entry)[:10]

    def find_by_hash(self, short: str) -> Optional[Entry]:
        """The entry whose sha256 starts with `short`, hashing files as needed."""
        short = short.lower()
        for entry in self._entries:
            if self.sha256(entry).startswith(short):
                return entry
        return None
