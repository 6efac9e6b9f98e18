"""Reading and writing hypernetwork files: webui .pt, NovelAI originals, .safetensors and .optim sidecars.

Nothing here executes code from a file: container.py reads .pt and .safetensors without torch.load, and
everything read is checked against the layout the metadata promises before a byte of weights is read.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, Hashable, Optional, TypeVar

import numpy
import torch

from ..bounds import MAX_LAYERS, MAX_STEP, MAX_WIDTHS, brief, parse_json
from ..config import ACTIVATIONS, MAX_WIDTH, WEIGHT_INITS, CreateOptions, parse_dropout_structure
from ..errors import ConfigError, FileFormatError, HypernetError
from ..network import Hypernetwork
from . import compat
from .container import Reader, TensorRef, load_object, read as read_container, webui_refusal

PT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ST_SUFFIX = ".safetensors"
SAFETENSORS_FORMAT = "hypernet"
SAFETENSORS_FORMAT_VERSION = "1"
# Zip members every torch since 1.6 reads, and the only ones every webui release's restricted loader accepts.
_KEEP_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
_ALIGN = 64
# An optimizer keeps a few fp32 values per weight (Adam two, Prodigy four); a file may hold its weights in fp16.
_MAX_OPTIM_FACTOR = 16
_NAI_RENAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
                "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


# ---------------------------------------------------------------------------------------------- hashing
def sha256_file(path) -> str:
    """Full sha256 hex digest of a file, read in 1 MiB blocks as the webui does."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shorthash(path) -> str:
    """The webui's short hash: the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]


# ---------------------------------------------------------------------------------------------- writing
def _new_file_mode(path: Path) -> int:
    """The permissions a plain open() would give: the replaced file's, else 0o666 minus the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write(path, data: bytes) -> None:
    """Write bytes so that `path` is always either the old file or the complete new one."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path, write: Callable) -> None:
    """Call write(file) on a temporary file beside `path`, then put it in place: old file or complete new one."""
    path = Path(path)
    mode = _new_file_mode(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HypernetError(f"{path}: cannot write here ({exc.strerror or exc}); choose another folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600 files, which a webui running as another user could not read
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise HypernetError(f"{path}: write failed ({exc.strerror or exc}); any earlier file there is "
                                "unchanged. Free some disk space or choose another folder") from None
        raise


def webui_torch_bytes(obj) -> bytes:
    """torch.save output reduced to the zip members every webui release's restricted loader accepts."""
    raw = io.BytesIO()
    torch.save(obj, raw)
    raw.seek(0)
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if _KEEP_MEMBER.match(info.filename):
                member = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                member.extra = _alignment_padding(out.tell(), member.filename)
                dst.writestr(member, src.read(info))
    return out.getvalue()


def _alignment_padding(offset: int, name: str) -> bytes:
    """A zip extra field that puts the member's data on a 64-byte boundary, as torch.save does: an aligned
    storage can be mapped and viewed as floats in place instead of being copied."""
    header = 30 + len(name.encode()) + 4  # local header, file name, the extra field's own id and length
    pad = -(offset + header) % _ALIGN
    return struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 0x4246 ("FB"): the id torch uses for the same padding


def _cpu_state(module, dtype: torch.dtype = torch.float32) -> "collections.OrderedDict":
    return collections.OrderedDict((k, v.detach().to("cpu", dtype).contiguous().clone())
                                   for k, v in module.state_dict().items())


def metadata_dict(hn: Hypernetwork) -> dict:
    """The 13 string keys of the webui's .pt layout, with the webui's types."""
    c = hn.config
    ds = list(c.dropout_structure or ())  # filled by CreateOptions.__post_init__
    return {
        "step": int(hn.step),
        "name": c.name,
        "layer_structure": [float(v) for v in c.layer_structure],
        "activation_func": c.activation,
        "is_layer_norm": bool(c.layer_norm),
        "weight_initialization": c.weight_init,
        "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name,
        "activate_output": bool(c.activate_output),
        # The webui takes dropout_structure over use_dropout; ComfyUI reads only use_dropout and never turns
        # dropout off, so True would make its images flicker. False changes nothing in the webui.
        "use_dropout": False,
        "dropout_structure": [float(v) for v in ds],
        "last_layer_dropout": bool(len(ds) >= 2 and ds[-2] != 0),
        "optional_info": hn.optional_info or None,
    }


def _check_savable(hn: Hypernetwork, path) -> None:
    if not isinstance(hn, Hypernetwork):
        raise HypernetError(f"{path}: expected a Hypernetwork to save, got {type(hn).__name__}")
    if not hn.is_finite():
        raise HypernetError(f"{path}: not saved, the hypernetwork has NaN or infinite weights (training diverged?)")


def to_pt_bytes(hn: Hypernetwork, dtype: torch.dtype = torch.float32) -> bytes:
    state: dict = {}
    for dim in hn.dims:
        k, v = hn.modules_for(dim)
        state[dim] = (_cpu_state(k, dtype), _cpu_state(v, dtype))
    state.update(metadata_dict(hn))
    return webui_torch_bytes(state)


def to_safetensors_bytes(hn: Hypernetwork, dtype: torch.dtype = torch.float32) -> bytes:
    from safetensors.torch import save as st_save
    tensors = {}
    for dim in hn.dims:
        for which, module in zip("kv", hn.modules_for(dim)):
            for key, value in _cpu_state(module, dtype).items():
                tensors[f"{dim}.{which}.{key}"] = value
    meta = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_FORMAT_VERSION,
            "hypernet": json.dumps(metadata_dict(hn))}
    return st_save(tensors, metadata=meta)


def save(hn: Hypernetwork, path, *, overwrite: bool = True, dtype: torch.dtype = torch.float32) -> str:
    """Write hn to .pt (webui layout) or .safetensors (by suffix), atomically, its weights in `dtype`; returns the
    path."""
    path = Path(path)
    _check_savable(hn, path)
    suffix = path.suffix.lower()
    if suffix == ST_SUFFIX:
        data = to_safetensors_bytes(hn, dtype)
    elif suffix in PT_SUFFIXES:
        data = to_pt_bytes(hn, dtype)
    else:
        raise HypernetError(f"{path}: unknown file type {path.suffix!r}; use .pt or .safetensors")
    if path.exists() and not overwrite:
        raise HypernetError(f"{path}: already exists; pass overwrite=True (or --overwrite) to replace it")
    atomic_write(path, data)
    hn.filename = str(path)
    return str(path)


def optim_path(path) -> str:
    return str(path) + ".optim"


def save_optimizer(path, optimizer_name: str, optimizer_state: dict, extra: Optional[dict] = None) -> str:
    """Write <path>.optim the webui's way, with the hash of the file it belongs to (the webui ignores extra keys)."""
    data = {"optimizer_name": optimizer_name, "hash": shorthash(path), "optimizer_state_dict": optimizer_state,
            **(extra or {})}
    target = optim_path(path)
    atomic_write(target, webui_torch_bytes(data))
    return target


# ---------------------------------------------------------------------------------------------- reading
def _what_is_it(obj: dict) -> str:
    keys = [k for k in obj.keys() if isinstance(k, str)][:50]
    if "string_to_param" in keys or "emb_params" in keys:
        return " It looks like a textual-inversion embedding; put it in the embeddings folder."
    if any("lora" in k for k in keys):
        return " It looks like a LoRA; put it in the Lora folder."
    if "state_dict" in keys or any(k.startswith("model.diffusion_model") for k in keys):
        return " It looks like a model checkpoint."
    return ""


def _meta_get(meta: dict, key: str, default, types, path):
    value = meta.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise FileFormatError(path, f"metadata {key!r} should be {_type_names(types)}, found {brief(value)}")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def _numbers(meta: dict, key: str, default, path):
    value = _meta_get(meta, key, default, (list, tuple), path)
    if value is not None and len(value) > MAX_LAYERS:
        raise FileFormatError(path, f"metadata {key!r} has {len(value):,} entries, more than the {MAX_LAYERS} a layer "
                                    "structure may have; the file is crafted or corrupt")
    if value is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise FileFormatError(path, f"metadata {key!r} should be a list of numbers, found {brief(value)}")
    return value


def config_from_metadata(meta: dict, dims: list, path) -> CreateOptions:
    """Creation options from a file's string keys, with the webui's defaults for missing keys."""
    stem = Path(path).stem
    structure = _numbers(meta, "layer_structure", [1, 2, 1], path)
    activation = _meta_get(meta, "activation_func", None, str, path) or "linear"
    if activation.lower() not in ACTIVATIONS:
        raise FileFormatError(path, f"activation {brief(activation)} is not supported; known: "
                                    f"{', '.join(ACTIVATIONS)}")
    init = _meta_get(meta, "weight_initialization", "Normal", str, path)
    dropout = _numbers(meta, "dropout_structure", None, path)
    use_dropout = _meta_get(meta, "use_dropout", False, (bool, int), path)
    last_layer_dropout = _meta_get(meta, "last_layer_dropout", False, (bool, int), path)
    if dropout is None or len(dropout) == 0:
        use = bool(use_dropout)
        dropout = parse_dropout_structure(list(structure), use, bool(last_layer_dropout)) if structure else None
    name = meta.get("name") if isinstance(meta.get("name"), str) else None
    fields = dict(dims=dims, layer_structure=structure, activation=activation,
                  weight_init=init if init in WEIGHT_INITS else "Normal",
                  layer_norm=bool(_meta_get(meta, "is_layer_norm", False, (bool, int), path)),
                  dropout_structure=dropout,
                  activate_output=bool(_meta_get(meta, "activate_output", True, (bool, int), path)))
    for candidate in [c for c in (name, stem) if c] + ["hypernetwork"]:
        try:
            return CreateOptions(name=candidate, **fields)
        except ConfigError as exc:
            if exc.field != "name":
                raise FileFormatError(path, f"metadata {exc}") from None
    raise FileFormatError(path, "cannot determine a name")  # unreachable: "hypernetwork" is valid


def _prepare_state(sd, path, dim: int, which: str) -> dict:
    if not isinstance(sd, dict):
        raise FileFormatError(path, f"width {dim} ({which}): expected a state dict, found {brief(sd)}")
    out = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, TensorRef):
            raise FileFormatError(path, f"width {dim} ({which}): entry {brief(key)} is not a named tensor")
        if not value.is_floating_point():
            raise FileFormatError(path, f"width {dim} ({which}): {brief(key)} has dtype {value.dtype}, expected floats")
        out[_NAI_RENAMES.get(key, key)] = value
    return out


def _check_module(module, sd: dict, path, dim: int, which: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(map(brief, extra[:5]))}" if extra else "") if part)
        raise FileFormatError(path, f"width {dim} ({which}): {detail}. The weights do not match the file's "
                                    "layer_structure / activation_func / is_layer_norm / dropout metadata")
    for key, tensor in expected.items():
        if tuple(sd[key].shape) != tuple(tensor.shape):
            raise FileFormatError(path, f"width {dim} ({which}): {key} has shape {list(sd[key].shape)}, expected "
                                        f"{list(tensor.shape)} for this width and layer structure")


_Name = TypeVar("_Name", bound=Hashable)


def first_nonfinite(named: Dict[_Name, torch.Tensor]) -> Optional[_Name]:
    """The first name whose tensor holds a NaN or an infinity, else None.

    A sum is finite only if every term is, so the exact (slower) check runs only for tensors whose sum is not
    finite, which also catches a sum of huge finite values that overflowed."""
    return next((k for k, t in named.items() if not math.isfinite(_sum(t)) and not bool(torch.isfinite(t).all())),
                None)


def _sum(tensor: torch.Tensor) -> float:
    """The sum of a tensor's values, on one thread for a CPU tensor: a torch reduction is split across its
    intra-op threads, and on a machine whose cores are busy each split waits whole time slices (a load
    measured 5-50x slower that way)."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and tensor.is_contiguous():
        with numpy.errstate(over="ignore", invalid="ignore"):  # an overflow is what the caller checks for
            return float(numpy.add.reduce(tensor.detach().numpy(), axis=None))
    return float(tensor.sum())


def _module_weights(sd: dict, reader: Reader, used: set) -> dict:
    """One module's float32 weights, viewed in place where the file's bytes allow it."""
    weights = {}
    for key, ref in sd.items():
        # A tensor the file lists twice (or a half-precision one) becomes a parameter of its own.
        value = reader.tensor(ref).to(torch.float32)
        weights[key] = value.clone() if ref.storage.key in used and ref.dtype == torch.float32 else value
        used.add(ref.storage.key)
    return weights


def _assign(module: torch.nn.Module, weights: dict) -> None:
    """Put each checked tensor in place as the module's parameter (keys and shapes were checked already)."""
    for key, value in weights.items():
        owner, _, name = key.rpartition(".")
        setattr(module.get_submodule(owner), name, torch.nn.Parameter(value, requires_grad=False))


def _fill(hn: Hypernetwork, states: dict, reader: Reader, path) -> None:
    """Read every module's weights, refuse non-finite ones, then assign them all."""
    used: set = set()
    weights = {(dim, which): _module_weights(states[(dim, which)], reader, used) for dim, which in states}
    bad = first_nonfinite({(dim, which, key): t for (dim, which), w in weights.items() for key, t in w.items()})
    if bad is not None:
        dim, which, key = bad
        raise FileFormatError(path, f"width {dim} ({which}): {key} contains NaN or infinite values (the "
                                    "training that made it diverged); use an earlier saved copy")
    for dim in hn.dims:
        for which, module in zip(("k", "v"), hn.modules_for(dim)):
            _assign(module, weights[(dim, which)])


def _max_parameter_bytes(container) -> int:
    """A load never allocates more than twice the file's size (half-precision files widen to float32)."""
    return 2 * container.size + (1 << 20)


def hypernetwork_from_state(obj, path, reader: Optional[Reader] = None, limit: Optional[int] = None) -> Hypernetwork:
    """A Hypernetwork from a file's object (TensorRef leaves), checked key by key and shape by shape.

    Without a reader the weights stay on the meta device: everything but the values is known and checked.
    """
    if not isinstance(obj, dict):
        raise FileFormatError(path, f"expected a dict of widths to (k, v) weights, found {brief(obj)}")
    layers = {k: v for k, v in obj.items() if type(k) is int}
    if not layers:
        raise FileFormatError(path, "holds no hypernetwork layers (no integer width keys)." + _what_is_it(obj))
    bad = [k for k in layers if not 0 < k <= MAX_WIDTH]
    if bad:
        raise FileFormatError(path, f"invalid layer width(s) {', '.join(brief(k, 30) for k in bad[:5])}; widths "
                                    f"are 1 to {MAX_WIDTH}")
    if len(layers) > MAX_WIDTHS:
        raise FileFormatError(path, f"holds {len(layers):,} widths, more than the {MAX_WIDTHS} a hypernetwork may "
                                    "have; the file is crafted or corrupt")
    meta = {k: v for k, v in obj.items() if isinstance(k, str)}
    config = config_from_metadata(meta, sorted(layers), path)
    step = _meta_get(meta, "step", 0, int, path)
    if not 0 <= step <= MAX_STEP:
        raise FileFormatError(path, f"metadata 'step' is {brief(step)}, outside 0 to {MAX_STEP:,}")
    # Counted from the options, before a module is built: a crafted file must not cost the modules it describes.
    if limit is not None and config.parameter_count() * 4 > limit:
        raise FileFormatError(path, f"its metadata describes {config.parameter_count():,} parameters, far more than "
                                    "the file's size can hold; the file is crafted or corrupt")
    hn = Hypernetwork(config, device="meta", init=False)
    states = {}
    for dim in config.dims:
        pair = layers[dim]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise FileFormatError(path, f"width {dim}: expected a (k, v) pair of state dicts, found {brief(pair)}")
        for which, module, sd in zip(("k", "v"), hn.modules_for(dim), pair):
            states[(dim, which)] = _prepare_state(sd, path, dim, which)
            _check_module(module, states[(dim, which)], path, dim, which)
    if reader is not None:
        _fill(hn, states, reader, path)
    hn.step = step
    hn.sd_checkpoint = meta.get("sd_checkpoint") if isinstance(meta.get("sd_checkpoint"), str) else None
    hn.sd_checkpoint_name = meta.get("sd_checkpoint_name") if isinstance(meta.get("sd_checkpoint_name"), str) else None
    hn.optional_info = meta.get("optional_info") if isinstance(meta.get("optional_info"), str) else None
    hn.extra_metadata = {k: v for k, v in meta.items() if k not in metadata_dict(hn)}
    hn.requires_grad_(False)
    hn.eval()
    hn.filename = str(path)
    return hn


def _safetensors_object(container, path) -> dict:
    """The webui-layout dict (int widths -> (k, v) state dicts, string metadata) of a hypernetwork safetensors."""
    header = container.metadata or {}
    if header.get("format") != SAFETENSORS_FORMAT:
        raise FileFormatError(path, "is a safetensors file without hypernetwork metadata (header 'format' is "
                                    f"{brief(header.get('format'))}, expected {SAFETENSORS_FORMAT!r}); is it a LoRA "
                                    "or a checkpoint?")
    meta = parse_json(path, header.get("hypernet", "{}"), "header 'hypernet'")
    if not isinstance(meta, dict):
        raise FileFormatError(path, "header 'hypernet' must be a JSON object")
    obj: dict = {k: v for k, v in meta.items() if isinstance(k, str)}
    for key, ref in container.tensors.items():
        found = re.match(r"^(\d{1,9})\.([kv])\.(.+)$", key)
        if not found:
            raise FileFormatError(path, f"unexpected tensor name {brief(key)}; expected "
                                        "'<width>.<k|v>.linear.<i>.<param>'")
        dim, which, rest = int(found.group(1)), found.group(2), found.group(3)
        obj.setdefault(dim, ({}, {}))[0 if which == "k" else 1][rest] = ref
    return obj


def _container(path):
    """The checked container of a hypernetwork file whose content matches its name."""
    path = Path(path)
    if path.suffix.lower() == ".optim":
        raise FileFormatError(path, "is an optimizer sidecar, not a hypernetwork; load the .pt beside it")
    found = read_container(path)
    named_st = path.suffix.lower() == ST_SUFFIX
    if named_st and found.kind != "safetensors":
        raise FileFormatError(path, f"holds PyTorch data but is named .safetensors; rename it to {path.stem}.pt")
    if not named_st and found.kind == "safetensors":
        raise FileFormatError(path, f"holds safetensors data but is named {path.suffix or 'without a suffix'}; "
                                    f"rename it to {path.stem}.safetensors")
    return found


def _layout(found, path) -> dict:
    return _safetensors_object(found, path) if found.kind == "safetensors" else found.obj


def _with_readers(hn: Hypernetwork, found, obj: dict) -> Hypernetwork:
    """Record which other loaders read this file identically (hn.readers), from what the file itself stores."""
    fmt = "safetensors" if found.kind == "safetensors" else "pt"
    stored = {k: v for k, v in obj.items() if isinstance(k, str)}
    hn.readers = compat.readers(fmt, stored, webui_refusal(found) if fmt == "pt" else None)
    return hn


def readers_of(hn: Hypernetwork, fmt: str) -> dict:
    """Which other loaders would read `hn` identically once saved by us as `fmt` ("pt" or "safetensors")."""
    return compat.readers(fmt, metadata_dict(hn), None)


def _read(path: Path, with_weights: bool) -> Hypernetwork:
    """The one path from a file to a Hypernetwork: container checks, layout checks, then (if asked) the weights."""
    found = _container(path)
    obj = _layout(found, path)
    limit = _max_parameter_bytes(found)
    if not with_weights:
        return _with_readers(hypernetwork_from_state(obj, path, limit=limit), found, obj)
    with Reader(found) as reader:
        return _with_readers(hypernetwork_from_state(obj, path, reader, limit=limit), found, obj)


def inspect(path) -> Hypernetwork:
    """A file's hypernetwork with its weights left unread (meta device): every check but finiteness, at once."""
    return _read(Path(path), with_weights=False)


def load(path, *, with_optimizer: bool = False) -> Hypernetwork:
    """Read a hypernetwork from .pt (webui or NovelAI layout) or .safetensors; never runs code from the file."""
    path = Path(path)
    hn = _read(path, with_weights=True)
    if with_optimizer:
        state = load_optimizer(path)
        if state is not None:
            hn.optimizer_name = state["optimizer_name"]
            hn.optimizer_state_dict = state["optimizer_state_dict"]
            hn.optimizer_extra = {k: v for k, v in state.items()
                                  if k not in ("optimizer_name", "hash", "optimizer_state_dict")}
    return hn


def _sidecar_fits(sidecar: Path, path, wanted: str) -> bool:
    """Whether a sidecar may be parsed: no larger than an optimizer's state for the file beside it can be, and its
    bytes hold the hash it must match (the hash is stored as text; a stale or foreign sidecar is skipped unread)."""
    try:
        size, own = sidecar.stat().st_size, Path(path).stat().st_size
    except OSError:
        return False
    if size > _MAX_OPTIM_FACTOR * own + (1 << 20):
        raise FileFormatError(sidecar, f"is {size:,} bytes, more than the optimizer state of a {own:,}-byte "
                                       "hypernetwork can be; the file is crafted or belongs elsewhere; delete it")
    digest = wanted.encode("ascii", "replace")
    with open(sidecar, "rb") as fh:  # scanned in blocks, overlapping by the hash's length
        tail = b""
        for block in iter(lambda: fh.read(1 << 20), b""):
            if digest in tail + block:
                return True
            tail = block[-len(digest):]
    return False


def load_optimizer(path, *, expected_hash: Optional[str] = None) -> Optional[dict]:
    """The .optim sidecar of `path` if it exists and its hash matches the file; else None. Its size and hash are
    checked before it is parsed."""
    sidecar = Path(optim_path(path))
    if not sidecar.exists():
        return None
    wanted = expected_hash or shorthash(path)
    if not _sidecar_fits(sidecar, path, wanted):
        return None
    data = load_object(sidecar)
    if not isinstance(data, dict) or not isinstance(data.get("optimizer_state_dict"), dict):
        raise FileFormatError(sidecar, "is not an optimizer sidecar (no optimizer_state_dict)")
    if data.get("hash") != wanted:
        return None
    name = data.get("optimizer_name")
    return {**data, "optimizer_name": name if isinstance(name, str) else "AdamW"}


def webui_check(path) -> Optional[str]:
    """None if the webui's restricted loader (safe.py) would accept the file, else the reason it refuses."""
    try:
        return webui_refusal(read_container(path))
    except HypernetError as exc:
        return str(exc).split(": ", 1)[-1]
