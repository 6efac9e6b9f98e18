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
import math
import mmap
import os
import pickle
import re
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Tuple, cast

import torch

from ..bounds import (MAX_DEPTH, MAX_HEADER_BYTES, MAX_INT_BITS, MAX_PICKLE_BYTES, MAX_PICKLE_OBJECTS, MAX_PICKLE_OPS,
                      MAX_TENSORS, MAX_ZIP_ENTRIES, brief, number_text, parse_json, short_error)
from ..errors import FileFormatError, UnsafeFileError

MAX_ELEMENTS = 1 << 48            # elements of one storage, and any size, stride or offset (256 TB of bytes)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_ZIP_ENTRY_BYTES = 160            # a torch member's directory entry: 46 bytes, its name and its alignment padding

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
    ("pytorch_lightning.callbacks", "model_checkpoint"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
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


# ---------------------------------------------------------------------------------------------- opening
def open_regular(path) -> Tuple[io.BufferedReader, int]:
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


class Inert:
    """A name real checkpoints carry that reading weights never needs (lightning's ModelCheckpoint class as a dict
    key, numpy's dtype and scalar for a logged score): it holds what the file gives it and runs nothing."""

    __slots__ = ("name", "args", "state")

    def __init__(self, name: str, args: tuple = (), state=None):
        self.name, self.args, self.state = name, args, state

    def __call__(self, *args):
        """What a REDUCE makes of it: a new placeholder holding the arguments (only for the callable names)."""
        if self.name not in _INERT_CALLABLE or self.args:
            raise _Refused(f"it calls {self.name}")
        if self.name == "_codecs.encode":  # protocol 2 pickles bytes as encode(text, "latin1")
            if not (len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1")):
                raise _Refused("it calls _codecs.encode with other arguments than (text, 'latin1')")
            return args[0].encode("latin-1")
        return Inert(self.name, args)

    def __repr__(self) -> str:
        return f"<{self.name} placeholder>"

    brief_text = property(__repr__)  # what bounds.brief shows for it


# module, name -> what the placeholder may do: called once (numpy's dtype and scalar, _codecs.encode) or not at all.
_INERT_CALLABLE = frozenset({"numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                             "_codecs.encode"})
_INERT = frozenset({"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                    "pytorch_lightning.callbacks.model_checkpoint", *_INERT_CALLABLE})


class _Refused(Exception):
    """Raised inside the unpickler when the pickle asks for something a weights file never needs."""


class _Exhausted(Exception):
    """Raised inside the unpickler when the pickle costs more than any weights file does."""


class Budget:
    """What reading one file may cost, counted as it is parsed: pickle instructions run, and objects built
    (containers, memo entries, storages, tensors). One budget serves every pickle of a file."""

    def __init__(self):
        self.ops = 0
        self.objects = 0
        self.storages = 0
        self.tensors = 0

    def op(self) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise _Exhausted(f"its pickle runs more than {MAX_PICKLE_OPS:,} instructions")

    def build(self, count: int = 1) -> None:
        self.objects += count
        if self.objects > MAX_PICKLE_OBJECTS:
            raise _Exhausted(f"its pickle builds more than {MAX_PICKLE_OBJECTS:,} objects (containers, memo "
                             "entries, tensors)")

    def storage(self) -> None:
        self.storages += 1
        if self.storages > MAX_TENSORS:
            raise _Exhausted(f"it declares more than {MAX_TENSORS:,} storages")

    def tensor(self) -> None:
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise _Exhausted(f"it describes more than {MAX_TENSORS:,} tensors")


def _small_int(value: int) -> int:
    """`value` unless it is wider than any number a weights file holds."""
    if abs(value).bit_length() > MAX_INT_BITS:
        raise _Exhausted(f"it holds the integer {number_text(value)}, wider than {MAX_INT_BITS} bits")
    return value


def _checked_dims(values) -> Tuple[int, ...]:
    """Sizes, strides or an offset of a tensor: plain ints from 0 to 2**48, else a FileFormatError."""
    values = tuple(values)
    if not all(type(v) is int and 0 <= v <= MAX_ELEMENTS for v in values):
        shown = ", ".join(brief(v, 24) for v in values[:8])
        raise FileFormatError("", f"a tensor with a malformed or out-of-range shape, stride or offset [{shown}]")
    return values


def _rebuild_tensor(storage, offset, size, stride, *rest) -> TensorRef:
    """torch._utils._rebuild_tensor(_v2), producing a description instead of a tensor."""
    if not isinstance(storage, Storage):
        raise FileFormatError("", "a tensor without a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride) \
            or len(size) > 8:
        raise FileFormatError("", "a tensor with a malformed shape or strides")
    (offset,), size, stride = _checked_dims([offset]), _checked_dims(size), _checked_dims(stride)
    return TensorRef(storage, offset, size, stride)


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
    **{cast(Tuple[str, str], tuple(name.rsplit(".", 1))): Inert(name) for name in _INERT},
}
_REFUSED_OPCODES = {"INST": pickle.INST, "OBJ": pickle.OBJ, "NEWOBJ": pickle.NEWOBJ, "NEWOBJ_EX": pickle.NEWOBJ_EX,
                    "EXT1": pickle.EXT1, "EXT2": pickle.EXT2, "EXT4": pickle.EXT4}
# Instructions that make a container, a memo entry or an object: each counts against Budget.build.
_BUILDING = (pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.LIST, pickle.DICT, pickle.TUPLE,
             pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET, pickle.PERSID,
             pickle.BINPERSID, pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE)
_INTEGERS = (pickle.INT, pickle.LONG, pickle.LONG1)


def _refuse_opcode(name: str) -> Callable:
    def refuse(self):
        raise _Refused(f"it uses the pickle instruction {name}, which builds arbitrary objects")
    return refuse


def _counted(code: bytes) -> Callable:
    """The instruction, counted against the budget's objects before it runs."""
    run = pickle._Unpickler.dispatch[code[0]]

    def counted(self):
        self.budget.build()
        run(self)
    return counted


def _narrow(code: bytes) -> Callable:
    """An integer instruction whose result must fit MAX_INT_BITS."""
    run = pickle._Unpickler.dispatch[code[0]]

    def narrowed(self):
        run(self)
        _small_int(self.stack[-1])
    return narrowed


class _Unpickler(pickle._Unpickler):  # the Python implementation: its opcode table can be narrowed
    """Unpickles plain containers and tensor descriptions within a Budget; anything else raises _Refused."""

    dispatch: ClassVar[Dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)  # our loads take _Unpickler
    for _name, _code in _REFUSED_OPCODES.items():
        dispatch[_code[0]] = _refuse_opcode(_name)
    for _code in _BUILDING:
        dispatch[_code[0]] = _counted(_code)
    for _code in _INTEGERS:
        dispatch[_code[0]] = _narrow(_code)

    def __init__(self, fh, storage: Callable[[str, torch.dtype, int, tuple], Storage], seen: List[str],
                 budget: Budget):
        super().__init__(fh)
        self._storage = storage
        self._seen = seen
        self.budget = budget

    def load(self):
        """pickle's own loop, with every instruction counted against the budget."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read, self.readinto, self.readline = (self._unframer.read, self._unframer.readinto,
                                                   self._unframer.readline)
        self.metastack, self.stack, self.proto = [], [], 0
        self.append = self.stack.append
        read, dispatch, op = self.read, self.dispatch, self.budget.op
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                op()
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value

    def load_long4(self):
        (n,) = struct.unpack("<i", self.read(4))
        if not 0 <= n <= MAX_INT_BITS // 8 + 1:
            raise _Exhausted(f"it holds an integer of {brief(n)} bytes, wider than {MAX_INT_BITS} bits")
        self.append(_small_int(pickle.decode_long(self.read(n))))

    dispatch[pickle.LONG4[0]] = load_long4

    def load_reduce(self):
        """A call (what REDUCE does): counted as an object built, and a tensor description also as a tensor."""
        self.budget.build()
        if self.stack[-2] is _rebuild_tensor:
            self.budget.tensor()
        pickle._Unpickler.load_reduce(self)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        # torch.save of module.state_dict() records the dict's _metadata this way; it is not needed.
        if type(target) is collections.OrderedDict and isinstance(state, dict):
            return
        if type(target) is Inert and target.name == "numpy.dtype" and target.args and target.state is None:
            target.state = state  # numpy's dtype records its byte order and flags so; kept, never applied
            return
        raise _Refused(f"it uses the pickle instruction BUILD on {type(target).__name__}")

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        found = _OUR_GLOBALS.get((str(module), str(name)))
        shown = f"{str(module)[:100]}.{str(name)[:100]}"  # names from the file: cut, they may be megabytes long
        if found is None:
            raise _Refused(f"it asks for {shown}")
        if shown not in self._seen:
            self._seen.append(shown)
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise FileFormatError("", f"unexpected persistent id {brief(pid)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if isinstance(kind, tuple):  # the legacy format pickles the type as (module, name)
            kind = self.find_class(*kind) if len(kind) == 2 else kind
        if not isinstance(kind, _StorageKind) or type(numel) is not int or not 0 <= numel <= MAX_ELEMENTS \
                or not isinstance(key, str) or len(key) > 100:
            raise FileFormatError("", f"malformed storage record {brief(pid)}")
        return self._storage(key, kind.dtype, numel, pid[5:])


def unpickle(path, fh, storage, seen: Optional[List[str]] = None, budget: Optional[Budget] = None):
    """The object in one pickle stream, with Storage/TensorRef leaves; refuses code, classes and odd opcodes, and
    pickles that cost more than `budget` allows (a fresh one by default)."""
    seen = [] if seen is None else seen
    try:
        return _Unpickler(fh, storage, seen, budget or Budget()).load()
    except _Refused as exc:
        raise UnsafeFileError(path, f"refused: the file may be malicious ({exc}); a hypernetwork holds only "
                                    "tensors and plain values, so it was not loaded and nothing in it ran") from None
    except _Exhausted as exc:
        raise FileFormatError(path, f"refused unread: {exc}, far more than a weights file needs; the file is "
                                    "crafted or corrupt") from None
    except FileFormatError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise FileFormatError(path, f"not a readable PyTorch file ({detail})") from None
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({short_error(exc)})") \
            from None


def _children(item) -> Optional[list]:
    """What a pickled value holds, or None for a leaf."""
    if isinstance(item, dict):
        return [*item.keys(), *item.values()]
    if isinstance(item, (list, tuple, set, frozenset)):
        return list(item)
    if type(item) is Inert:
        return [item.args, item.state]
    return None


def postorder(path, obj) -> List[object]:
    """Every container and tensor description reachable from `obj`, each once, children before parents; refuses
    a value that holds itself and nesting past MAX_DEPTH. Iterative, with a visited set: shared references cost
    one visit, and no Python recursion follows the file's structure."""
    order: List[object] = []
    done, active = set(), set()
    stack = [(obj, 0, False)]
    while stack:
        item, depth, leaving = stack.pop()
        key = id(item)
        if leaving:
            active.discard(key)
            done.add(key)
            order.append(item)
            continue
        children = [] if isinstance(item, TensorRef) else _children(item)
        if children is None or key in done:
            continue
        if key in active:
            raise FileFormatError(path, "a value in the file holds itself (a reference cycle), which no weights "
                                        "file does; the file is crafted or corrupt")
        if depth > MAX_DEPTH:
            raise FileFormatError(path, f"values in the file are nested too deeply (over {MAX_DEPTH} levels) for "
                                        "a weights file; not loaded")
        active.add(key)
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return order


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

    order: Tuple[object, ...] = ()  # pt: every container and tensor of `obj`, children first (postorder)

    def refs(self) -> Iterator[TensorRef]:
        """Every tensor description in the container, each once."""
        if self.tensors is not None:
            yield from self.tensors.values()
        else:
            yield from (item for item in self.order if isinstance(item, TensorRef))


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
    if container.tensors is None:
        container.order = tuple(postorder(path, container.obj))
    check_budget(path, container)
    return container


def check_budget(path, container: Container) -> None:
    """Refuse views past their storage, and tensors claiming more elements than the file stores."""
    stored: Dict[str, int] = {}
    claimed = 0
    # One view listed several times (the pickle memo, or k and v saved from the same tensors) is stored once.
    unique = {(ref.storage.key, ref.offset, ref.shape, ref.stride): ref for ref in container.refs()}
    if len(unique) > MAX_TENSORS:
        raise FileFormatError(path, f"it describes {len(unique):,} tensors, more than the {MAX_TENSORS:,} a weights "
                                    "file may hold; refused unread")
    for ref in unique.values():
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
    if not 0 <= info.header_offset < size:  # zipfile derives it from the directory's own offsets, which may lie
        raise FileFormatError(path, f"zip member {brief(info.filename)} starts outside the file (truncated or "
                                    "crafted)")
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != _ZIP_MAGIC:
        raise FileFormatError(path, f"zip member {info.filename!r} has no local header (truncated?)")
    fields = _LOCAL_HEADER.unpack(raw)
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    if start + info.file_size > size:
        raise FileFormatError(path, f"zip member {info.filename!r} runs past the end of the file (truncated?)")
    return start


def _check_directory(path, fh) -> None:
    """Refuse a zip whose central directory lists more members than a torch file has, before zipfile reads it
    (zipfile builds an object per entry)."""
    try:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # private; the end record (zip64 too)
    except (OSError, ValueError, EOFError, struct.error):
        end = None
    if not end:
        raise FileFormatError(path, "not a readable PyTorch file, truncated or corrupt (no zip directory)")
    entries, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_ENTRIES * _ZIP_ENTRY_BYTES:
        raise FileFormatError(path, f"its zip directory ({number_text(directory)} bytes, {number_text(entries)} "
                                    f"members) is larger than that of a torch file with the most members allowed "
                                    f"({MAX_ZIP_ENTRIES:,}); refused unread")


def _zip_members(path, fh, size: int) -> Dict[str, Tuple[zipfile.ZipInfo, int]]:
    """Member name -> (info, data offset), refusing compressed, oversized and overlapping members."""
    _check_directory(path, fh)
    try:
        infos = zipfile.ZipFile(fh).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({short_error(exc)})") \
            from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise FileFormatError(path, f"it has {len(infos):,} zip members, more than the {MAX_ZIP_ENTRIES:,} a torch "
                                    "file may have")
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
    for (_, a1, a), (b0, _, b) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FileFormatError(path, f"zip members {a!r} and {b!r} share bytes; the file is crafted or corrupt")
    return members


def _read_member(path, fh, members, name: str, limit: int) -> bytes:
    info, start = members[name]
    if info.file_size > limit:
        raise FileFormatError(path, f"zip member {name!r} is {info.file_size:,} bytes, more than the {limit:,} a "
                                    "weights file's pickle may have; refused unread")
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

    budget = Budget()

    def storage(key, dtype, numel, rest):
        budget.storage()
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
    obj = unpickle(path, stream, _memo(storage), seen, budget)
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


class _Limited:
    """A file as the legacy format's pickles read it: reads past MAX_PICKLE_BYTES in all, or past the file's end,
    are refused before a buffer is allocated for them (a length field may claim terabytes)."""

    def __init__(self, fh, size: int):
        self._fh, self._size, self._used = fh, size, 0

    def _allow(self, n: int) -> int:
        left = min(MAX_PICKLE_BYTES - self._used, self._size - self._fh.tell())
        if n is None or n < 0 or n > left:
            if n is not None and n >= 0 and self._used + n > MAX_PICKLE_BYTES:
                raise _Exhausted(f"its pickles are longer than {MAX_PICKLE_BYTES:,} bytes")
            n = max(left, 0)  # past the end: read what is there, and let the unpickler see it is truncated
        self._used += n
        return n

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(self._allow(n))

    def readline(self, n: int = -1) -> bytes:
        line = self._fh.readline(min(MAX_PICKLE_BYTES - self._used, 1 << 16))
        self._used += len(line)
        return line


def _read_legacy(path, fh, size: int) -> Container:
    """torch's pre-1.6 format: magic, protocol, system info, the object, storage keys, then each storage's bytes.
    Its five pickles share one budget and one byte limit."""
    nothing, budget, limited = _no_storage, Budget(), _Limited(fh, size)
    magic = unpickle(path, limited, nothing, budget=budget)
    if magic != _LEGACY_MAGIC:
        raise FileFormatError(path, "is a pickle but not a PyTorch file (no torch magic number)")
    unpickle(path, limited, nothing, budget=budget)
    sys_info = unpickle(path, limited, nothing, budget=budget)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise FileFormatError(path, "was saved on a big-endian machine; re-save it with torch on a little-endian one")
    pending: Dict[str, Storage] = {}

    def declare(key, dtype, numel, rest):
        budget.storage()
        if rest and rest[-1] is not None:
            raise FileFormatError("", "storage views (torch < 1.0 files) are not supported; re-save the file")
        pending[key] = Storage(key, dtype, numel, -1)  # placed once the storages' positions are known
        return pending[key]

    seen: List[str] = []
    obj = unpickle(path, limited, _memo(declare), seen, budget)
    keys = unpickle(path, limited, nothing, budget=budget)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(pending) \
            or len(keys) != len(pending):
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


def _read_safetensors(path, fh, size: int) -> Container:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise FileFormatError(path, f"safetensors header claims {length:,} bytes, more than the file or the "
                                    f"{MAX_HEADER_BYTES:,}-byte limit allows (truncated or crafted)")
    header = parse_json(path, fh.read(length), "the safetensors header")
    if not isinstance(header, dict):
        raise FileFormatError(path, "the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FileFormatError(path, "the safetensors __metadata__ must map names to strings")
    if len(header) > MAX_TENSORS:
        raise FileFormatError(path, f"its header lists {len(header):,} tensors, more than the {MAX_TENSORS:,} a "
                                    "weights file may hold; refused unread")
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
    shown = brief(name)
    if not isinstance(info, dict):
        raise FileFormatError(path, f"tensor {shown}: expected an object with dtype, shape and data_offsets, found "
                                    f"{brief(info)}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise FileFormatError(path, f"tensor {shown}: unknown dtype {brief(dtype)}")
    if not (isinstance(shape, list) and len(shape) <= 8
            and all(type(s) is int and 0 <= s <= MAX_ELEMENTS for s in shape)):
        raise FileFormatError(path, f"tensor {shown}: malformed shape {brief(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise FileFormatError(path, f"tensor {shown}: malformed data_offsets {brief(offsets)}")
    if not 0 <= offsets[0] <= offsets[1] <= room:
        raise FileFormatError(path, f"tensor {shown} (shape [{', '.join(brief(s) for s in shape)}], {dtype}) claims "
                                    f"data bytes {brief(offsets[0])} to {brief(offsets[1])}, but the file is "
                                    f"{base + room} bytes with {room} of data after its header (truncated or "
                                    "crafted)")
    dtype = _ST_DTYPES[dtype]
    numel = math.prod(shape)
    if offsets[1] - offsets[0] != numel * element_size(dtype):
        raise FileFormatError(path, f"tensor {shown}: shape {shape} needs {numel * element_size(dtype)} bytes, the "
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
        """The object with every TensorRef replaced by its tensor (for .optim sidecars and tests): built children
        first over postorder(), so shared values are built once and nothing recurses."""
        made: Dict[int, object] = {}
        new = lambda value: made.get(id(value), value)  # noqa: E731
        for item in postorder(self.container.path, obj):
            if isinstance(item, TensorRef):
                made[id(item)] = self.tensor(item)
            elif type(item) in (dict, collections.OrderedDict):
                made[id(item)] = type(item)((k, new(v)) for k, v in item.items())
            elif type(item) in (list, tuple):
                made[id(item)] = type(item)(new(v) for v in item)
        return new(obj)


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
