"""Reading weight containers without running code: torch zip and legacy pickles, and safetensors.

Every tensor is first described (a TensorRef: dtype, shape, strides and where its bytes lie) and checked against
the bytes the file really holds; only then, and only if asked, are its bytes read. Compressed or overlapping zip
members, storages larger or smaller than their member, views reaching past their storage and tensors that claim
more elements than the file stores are refused before anything is allocated, so reading costs memory near the
file's own size. One restricted unpickler serves the full load, the header-only read of cards and the check of
what the webui's own loader would accept. torch.load is never called, so a host that replaces it (the webui's
safe.py) changes nothing here.
"""
from __future__ import annotations

import collections
import functools
import io
import json
import math
import mmap
import os
import pickle
import re
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from .errors import FileFormatError, UnsafeFileError

MAX_PICKLE_BYTES = 64 << 20       # a hypernetwork's pickle is a few KB; tensors live outside it
MAX_HEADER_BYTES = 100 << 20      # safetensors' own limit
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_TORCH_DTYPES = {str(d).split(".")[-1]: d for d in set(_STORAGE_DTYPES.values())}
# The webui's RestrictedUnpickler (modules/safe.py) allow-list and zip member rule, for webui_refusal().
WEBUI_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
    ("torch", "IntStorage"), ("torch", "LongStorage"), ("torch", "DoubleStorage"), ("torch", "ByteStorage"),
    ("torch", "BFloat16Storage"), ("torch", "float32"), ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"), ("numpy", "dtype"),
    ("numpy", "ndarray"), ("_codecs", "encode"), ("builtins", "set"),
})
WEBUI_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|\.data/serialization_id|(data\.pkl))$")


@functools.lru_cache(maxsize=None)
def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of a dtype (asked for every tensor of every file, so remembered)."""
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class Storage:
    """A run of bytes in the file that one or more tensors view."""

    key: str
    dtype: torch.dtype
    numel: int
    offset: int            # byte offset in the file

    @property
    def nbytes(self) -> int:
        return self.numel * element_size(self.dtype)


@dataclass(frozen=True)
class TensorRef:
    """A tensor as the file describes it, before any of its bytes are read."""

    storage: Storage
    offset: int            # in elements, within the storage
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def whole(self) -> bool:
        """True when the tensor is its storage, contiguous from the first element to the last."""
        return self.offset == 0 and self.numel == self.storage.numel and self.stride == contiguous_strides(self.shape)


def contiguous_strides(shape) -> Tuple[int, ...]:
    """Row-major strides of a shape."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def brief(value, limit: int = 80) -> str:
    """A short, never-recursing description of a value read from a file, for error messages."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
    elif isinstance(value, (list, tuple, dict)):
        text = f"a {type(value).__name__} of {len(value)} items"
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------- opening
def open_regular(path) -> Tuple[object, int]:
    """(binary file object, size) for a regular file; never blocks on a pipe, refuses folders and devices."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise FileFormatError(path, "is a folder, expected a .pt or .safetensors file") from None
    except PermissionError:
        raise FileFormatError(path, "cannot read it (permission denied); check the file's permissions") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot read it ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a named pipe, socket or device?)"
        raise FileFormatError(path, f"is {what}; expected a .pt or .safetensors file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def sniff(head: bytes) -> Optional[str]:
    """'zip', 'legacy' or 'safetensors' from a file's first 9 bytes; None when it is none of them."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


# ---------------------------------------------------------------------------------------------- unpickling
class _StorageKind:
    """What a `torch.XStorage` global stands for: only its dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _Refused(Exception):
    """Raised inside the unpickler when the pickle asks for something a weights file never needs."""


def _rebuild_tensor(storage, offset, size, stride, *rest) -> TensorRef:
    """torch._utils._rebuild_tensor(_v2), producing a description instead of a tensor."""
    if not isinstance(storage, Storage):
        raise FileFormatError("", "a tensor without a storage")
    dims = [offset, *size, *stride]
    if not all(type(v) is int for v in dims) or len(size) != len(stride) or len(size) > 8:
        raise FileFormatError("", "a tensor with a malformed shape or strides")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *rest):
    """torch._utils._rebuild_parameter(_with_state): the tensor itself."""
    if not isinstance(data, TensorRef):
        raise FileFormatError("", "a parameter without a tensor")
    return data


_OUR_GLOBALS: Dict[Tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
}
_REFUSED_OPCODES = {"INST": pickle.INST, "OBJ": pickle.OBJ, "NEWOBJ": pickle.NEWOBJ, "NEWOBJ_EX": pickle.NEWOBJ_EX,
                    "EXT1": pickle.EXT1, "EXT2": pickle.EXT2, "EXT4": pickle.EXT4}


def _refuse_opcode(name: str) -> Callable:
    def refuse(self):
        raise _Refused(f"it uses the pickle instruction {name}, which builds arbitrary objects")
    return refuse


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcode table can be narrowed
    """Unpickles plain containers and tensor descriptions; anything else raises _Refused."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _name, _code in _REFUSED_OPCODES.items():
        dispatch[_code[0]] = _refuse_opcode(_name)

    def __init__(self, fh, storage: Callable[[str, torch.dtype, int, tuple], Storage], seen: List[str]):
        super().__init__(fh)
        self._storage = storage
        self._seen = seen

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        # torch.save of module.state_dict() records the dict's _metadata this way; it is not needed.
        if type(target) is collections.OrderedDict and isinstance(state, dict):
            return
        raise _Refused(f"it uses the pickle instruction BUILD on {type(target).__name__}")

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        self._seen.append(f"{module}.{name}")
        found = _OUR_GLOBALS.get((str(module), str(name)))
        if found is None:
            raise _Refused(f"it asks for {module}.{name}")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise FileFormatError("", f"unexpected persistent id {brief(pid)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if isinstance(kind, tuple):  # the legacy format pickles the type as (module, name)
            kind = self.find_class(*kind) if len(kind) == 2 else kind
        if not isinstance(kind, _StorageKind) or type(numel) is not int or numel < 0 or not isinstance(key, str):
            raise FileFormatError("", f"malformed storage record {brief(pid)}")
        return self._storage(key, kind.dtype, numel, pid[5:])


def unpickle(path, fh, storage, seen: Optional[List[str]] = None):
    """The object in one pickle stream, with Storage/TensorRef leaves; refuses code, classes and odd opcodes."""
    seen = [] if seen is None else seen
    try:
        return _Unpickler(fh, storage, seen).load()
    except _Refused as exc:
        raise UnsafeFileError(path, f"refused: the file may be malicious ({exc}); a hypernetwork holds only "
                                    "tensors and plain values, so it was not loaded and nothing in it ran") from None
    except FileFormatError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise FileFormatError(path, f"not a readable PyTorch file ({detail})") from None
    except RecursionError:
        raise FileFormatError(path, "not a readable PyTorch file (nested too deeply)") from None
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first[:200] + ("..." if len(first) > 200 else "")


# ---------------------------------------------------------------------------------------------- containers
@dataclass
class Container:
    """What a file holds, with tensors described but not read: `obj` (pt) or `tensors` + `metadata` (safetensors)."""

    path: str
    kind: str                       # "zip", "legacy" or "safetensors"
    size: int
    obj: object = None
    tensors: Optional[Dict[str, TensorRef]] = None
    metadata: Optional[Dict[str, str]] = None
    members: Tuple[str, ...] = ()
    globals_used: Tuple[str, ...] = ()

    def refs(self) -> Iterator[TensorRef]:
        """Every tensor description in the container."""
        if self.tensors is not None:
            yield from self.tensors.values()
        else:
            yield from _walk_refs(self.obj)


def _walk_refs(obj) -> Iterator[TensorRef]:
    stack = [obj]
    while stack:  # iterative: a hostile pickle may nest deeply
        item = stack.pop()
        if isinstance(item, TensorRef):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def read(path) -> Container:
    """Parse and check a .pt or .safetensors file's structure; no tensor bytes are read."""
    fh, size = open_regular(path)
    with fh:
        head = fh.read(9)
        if not head:
            raise FileFormatError(path, "file is empty (an interrupted download or save?)")
        kind = sniff(head)
        fh.seek(0)
        if kind == "zip":
            container = _read_zip(path, fh, size)
        elif kind == "legacy":
            container = _read_legacy(path, fh, size)
        elif kind == "safetensors":
            container = _read_safetensors(path, fh, size)
        else:
            raise FileFormatError(path, "is neither a PyTorch (.pt) nor a safetensors file (a web page saved by "
                                        "mistake, or a damaged download?)")
    check_budget(path, container)
    return container


def check_budget(path, container: Container) -> None:
    """Refuse views past their storage, and tensors claiming more elements than the file stores."""
    stored: Dict[str, int] = {}
    claimed = 0
    # One view listed several times (the pickle memo, or k and v saved from the same tensors) is stored once.
    unique = {(ref.storage.key, ref.offset, ref.shape, ref.stride): ref for ref in container.refs()}
    for ref in unique.values():
        if any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride) or ref.offset < 0:
            raise FileFormatError(path, f"a tensor has a negative size, stride or offset {list(ref.shape)}")
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) + 1 if ref.numel else 0
        if extent > ref.storage.numel:
            raise FileFormatError(path, f"a tensor of shape {list(ref.shape)} reaches past the {ref.storage.numel} "
                                        "values its storage holds; the file is corrupt or crafted")
        stored[ref.storage.key] = ref.storage.nbytes
        claimed += ref.numel * element_size(ref.dtype)
    if claimed > sum(stored.values()):
        raise FileFormatError(path, f"its tensors claim {claimed} bytes but the file stores {sum(stored.values())}: "
                                    "they repeat values (expanded or overlapping views) the way a crafted file "
                                    "does to exhaust memory; not loaded")


def _zip_data_offset(path, fh, info: zipfile.ZipInfo, size: int) -> int:
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != _ZIP_MAGIC:
        raise FileFormatError(path, f"zip member {info.filename!r} has no local header (truncated?)")
    fields = _LOCAL_HEADER.unpack(raw)
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    if start + info.file_size > size:
        raise FileFormatError(path, f"zip member {info.filename!r} runs past the end of the file (truncated?)")
    return start


def _zip_members(path, fh, size: int) -> Dict[str, Tuple[zipfile.ZipInfo, int]]:
    """Member name -> (info, data offset), refusing compressed, oversized and overlapping members."""
    try:
        infos = zipfile.ZipFile(fh).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({_short(exc)})") from None
    members: Dict[str, Tuple[zipfile.ZipInfo, int]] = {}
    spans = []
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise FileFormatError(path, f"zip member {info.filename!r} is compressed; torch never compresses its "
                                        "files, and a compressed member can expand far past the file's size, so "
                                        "it is refused unread (re-save the file with torch.save)")
        if info.file_size != info.compress_size or info.filename in members:
            raise FileFormatError(path, f"zip member {info.filename!r} is malformed or repeated")
        start = _zip_data_offset(path, fh, info, size)
        members[info.filename] = (info, start)
        spans.append((start, start + info.file_size, info.filename))
    spans.sort()
    for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FileFormatError(path, f"zip members {a!r} and {b!r} share bytes; the file is crafted or corrupt")
    return members


def _read_member(path, fh, members, name: str, limit: int) -> bytes:
    info, start = members[name]
    if info.file_size > limit:
        raise FileFormatError(path, f"zip member {name!r} is {info.file_size} bytes, more than a hypernetwork "
                                    f"file's {limit}; refused unread")
    fh.seek(start)
    data = fh.read(info.file_size)
    if len(data) != info.file_size:
        raise FileFormatError(path, f"zip member {name!r} is truncated")
    return data


def _read_zip(path, fh, size: int) -> Container:
    members = _zip_members(path, fh, size)
    pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise FileFormatError(path, "is a zip file but not a PyTorch file (it needs exactly one <name>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    order = members.get(prefix + "byteorder")
    if order is not None and _read_member(path, fh, members, prefix + "byteorder", 16).strip() != b"little":
        raise FileFormatError(path, "was saved on a big-endian machine; re-save it with torch on a little-endian one")

    def storage(key, dtype, numel, rest):
        name = f"{prefix}data/{key}"
        if name not in members:
            raise FileFormatError(path, f"storage {key!r} has no zip member {name!r} (truncated?)")
        info, start = members[name]
        if info.file_size != numel * element_size(dtype):
            raise FileFormatError(path, f"storage {key!r} should hold {numel * element_size(dtype)} bytes, its zip "
                                        f"member holds {info.file_size}")
        return Storage(key, dtype, numel, start)

    stream = io.BytesIO(_read_member(path, fh, members, pickles[0], MAX_PICKLE_BYTES))
    seen: List[str] = []
    obj = unpickle(path, stream, _memo(storage), seen)
    return Container(str(path), "zip", size, obj=obj, members=tuple(members), globals_used=tuple(seen))


def _memo(make: Callable) -> Callable:
    """One Storage per key, however many tensors view it; a key seen twice must agree."""
    made: Dict[str, Storage] = {}

    def storage(key, dtype, numel, rest):
        if key in made:
            if (made[key].dtype, made[key].numel) != (dtype, numel):
                raise FileFormatError("", f"storage {key!r} is described twice, differently")
            return made[key]
        made[key] = make(key, dtype, numel, rest)
        return made[key]
    return storage


def _no_storage(key, dtype, numel, rest):
    raise FileFormatError("", "a storage inside a file header")


def _read_legacy(path, fh, size: int) -> Container:
    """torch's pre-1.6 format: magic, protocol, system info, the object, storage keys, then each storage's bytes."""
    nothing = _no_storage
    magic = unpickle(path, fh, nothing)
    if magic != _LEGACY_MAGIC:
        raise FileFormatError(path, "is a pickle but not a PyTorch file (no torch magic number)")
    unpickle(path, fh, nothing)
    sys_info = unpickle(path, fh, nothing)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise FileFormatError(path, "was saved on a big-endian machine; re-save it with torch on a little-endian one")
    pending: Dict[str, Storage] = {}

    def declare(key, dtype, numel, rest):
        if rest and rest[-1] is not None:
            raise FileFormatError("", "storage views (torch < 1.0 files) are not supported; re-save the file")
        pending[key] = Storage(key, dtype, numel, -1)  # placed once the storages' positions are known
        return pending[key]

    seen: List[str] = []
    obj = unpickle(path, fh, _memo(declare), seen)
    keys = unpickle(path, fh, nothing)
    if not isinstance(keys, list) or set(keys) != set(pending) or len(keys) != len(pending):
        raise FileFormatError(path, "its storage list does not match its tensors (truncated or corrupt)")
    for key in keys:
        storage = pending[key]
        raw = fh.read(8)
        if len(raw) != 8 or struct.unpack("<q", raw)[0] != storage.numel:
            raise FileFormatError(path, f"storage {key!r} is truncated or does not match its description")
        storage.offset = fh.tell()
        if storage.offset + storage.nbytes > size:
            raise FileFormatError(path, f"storage {key!r} runs past the end of the file (truncated?)")
        fh.seek(storage.offset + storage.nbytes)
    return Container(str(path), "legacy", size, obj=obj, globals_used=tuple(seen))


def parse_json(path, text, what: str):
    """JSON from a file's header, with one clear error for bad syntax, bad encoding or absurd nesting."""
    try:
        return json.loads(text)
    except RecursionError:
        raise FileFormatError(path, f"{what} is nested too deeply to be a hypernetwork's; not loaded") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, f"{what} is not valid JSON ({_short(exc)}); truncated or corrupt") from None


def _read_safetensors(path, fh, size: int) -> Container:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise FileFormatError(path, f"safetensors header claims {length} bytes, more than the file or the "
                                    f"{MAX_HEADER_BYTES}-byte limit allows (truncated or crafted)")
    header = parse_json(path, fh.read(length), "the safetensors header")
    if not isinstance(header, dict):
        raise FileFormatError(path, "the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FileFormatError(path, "the safetensors __metadata__ must map names to strings")
    base, room = 8 + length, size - 8 - length
    tensors: Dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        tensors[name] = _st_ref(path, name, info, base, room)
        spans.append((tensors[name].storage.offset, tensors[name].storage.nbytes, name))
    spans.sort()
    for (a0, an, a), (b0, _, b) in zip(spans, spans[1:]):
        if b0 < a0 + an:
            raise FileFormatError(path, f"tensors {a!r} and {b!r} share bytes; the file is crafted or corrupt")
    return Container(str(path), "safetensors", size, tensors=tensors, metadata=meta)


def _st_ref(path, name: str, info, base: int, room: int) -> TensorRef:
    """One safetensors header entry as a TensorRef, checked: known dtype, sane shape, bytes inside the file."""
    if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
        found = info.get("dtype") if isinstance(info, dict) else info
        raise FileFormatError(path, f"tensor {name!r}: unknown dtype {brief(found)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(type(s) is int and s >= 0 for s in shape)):
        raise FileFormatError(path, f"tensor {name!r}: malformed shape {brief(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise FileFormatError(path, f"tensor {name!r}: malformed data_offsets {brief(offsets)}")
    if not 0 <= offsets[0] <= offsets[1] <= room:
        start, end = offsets
        raise FileFormatError(path, f"tensor {name!r} (shape [{', '.join(brief(s) for s in shape)}], {info['dtype']}) "
                                    f"claims data bytes {brief(start)} to {brief(end)}, but the file is "
                                    f"{base + room} bytes with {room} of data after its header (truncated or "
                                    "crafted)")
    dtype = _ST_DTYPES[info["dtype"]]
    numel = math.prod(shape)
    if offsets[1] - offsets[0] != numel * element_size(dtype):
        raise FileFormatError(path, f"tensor {name!r}: shape {shape} needs {numel * element_size(dtype)} bytes, the "
                                    f"file gives it {offsets[1] - offsets[0]}")
    storage = Storage(name, dtype, numel, base + offsets[0])
    return TensorRef(storage, 0, tuple(shape), contiguous_strides(shape))


# ---------------------------------------------------------------------------------------------- reading bytes
class Reader:
    """Tensors over one copy-on-write map of the file: no byte is copied, the pages are the page cache's own.

    The map is private (ACCESS_COPY, MAP_PRIVATE): writing to a loaded weight (an optimizer step) copies that
    page for this process and never reaches the file. Files that hypernet writes are replaced by a rename, so a
    mapping keeps the old contents; a tool that rewrote the same file in place (truncate, then write) would change
    or cut the pages not yet written, as it would under safetensors' own loader. Windows cannot replace a
    mapped file, so there, and with `copy=True`, each storage is read into memory the tensor then owns.
    """

    def __init__(self, container: Container, *, copy: bool = os.name == "nt"):
        self.container = container
        self._fh, size = open_regular(container.path)
        if size != container.size:
            self._fh.close()
            raise FileFormatError(container.path, "changed while it was being read; try again")
        self._map: Optional[mmap.mmap] = None
        if not copy and size:
            # The tensors made from it keep the map alive; the file descriptor is not needed once mapped.
            self._map = mmap.mmap(self._fh.fileno(), size, access=mmap.ACCESS_COPY)
        self._storages: Dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def _storage(self, storage: Storage) -> torch.Tensor:
        found = self._storages.get(storage.key)
        if found is None:
            found = self._mapped(storage) if self._map is not None else self._copied(storage)
            self._storages[storage.key] = found
        return found

    def _mapped(self, storage: Storage) -> torch.Tensor:
        """The storage over its own bytes of the map; read into memory when its offset is not aligned to its dtype.

        Each storage gets a torch storage of exactly its size (frombuffer with an offset and a count), never a view
        of one storage spanning the file: torch.save of a loaded tensor then writes that tensor's bytes, as for
        any other tensor, and the file reads back."""
        size = element_size(storage.dtype)
        if storage.offset % size or not storage.nbytes:
            return self._copied(storage)
        return torch.frombuffer(self._map, dtype=storage.dtype, count=storage.nbytes // size, offset=storage.offset)

    def _copied(self, storage: Storage) -> torch.Tensor:
        """The storage read into fresh memory."""
        raw = torch.empty(storage.nbytes, dtype=torch.uint8)  # not zero-filled: every byte is read into it
        self._fh.seek(storage.offset)
        if storage.nbytes and self._fh.readinto(memoryview(raw.numpy())) != storage.nbytes:
            raise FileFormatError(self.container.path, "changed or got shorter while it was being read")
        return raw.view(storage.dtype)

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        """The tensor's values; a view of a whole storage costs no copy."""
        base = self._storage(ref.storage)
        if ref.whole():
            return base.view(ref.shape)
        return base.as_strided(ref.shape, ref.stride, ref.offset).clone()

    def materialize(self, obj):
        """The object with every TensorRef replaced by its tensor (for .optim sidecars and tests)."""
        if isinstance(obj, TensorRef):
            return self.tensor(obj)
        if isinstance(obj, dict):
            return type(obj)((k, self.materialize(v)) for k, v in obj.items()) \
                if type(obj) in (dict, collections.OrderedDict) else obj
        if type(obj) in (list, tuple):
            return type(obj)(self.materialize(v) for v in obj)
        return obj


def load_object(path):
    """A .pt file's object with real tensors: a torch.load(weights_only=True) that never calls torch.load."""
    container = read(path)
    if container.kind == "safetensors":
        raise FileFormatError(path, "holds safetensors data, not a PyTorch object")
    with Reader(container) as reader:
        return reader.materialize(container.obj)


def webui_refusal(container: Container) -> Optional[str]:
    """None when the webui's restricted loader would accept this .pt container, else its reason to refuse."""
    if container.kind == "safetensors":
        return "the webui reads hypernetworks only from .pt files"
    for name in container.members:
        if not WEBUI_MEMBER.match(name):
            return f"zip member {name!r} is not allowed by the webui's loader"
    for name in container.globals_used:
        module, _, attr = name.rpartition(".")
        if (module, attr) not in WEBUI_GLOBALS:
            return f"global '{module}/{attr}' is forbidden by the webui's loader"
    return None
