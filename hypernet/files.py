"""Reading and writing hypernetwork files: webui .pt, NovelAI originals, .safetensors and .optim sidecars.

Nothing here executes code from a file: .pt files go through torch's weights-only unpickler, and everything
read is checked against the layout the metadata promises before it becomes a Hypernetwork.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import torch

from .config import ACTIVATIONS, WEIGHT_INITS, CreateOptions, parse_dropout_structure
from .errors import ConfigError, FileFormatError, HypernetError, UnsafeFileError
from .network import Hypernetwork

PT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ST_SUFFIX = ".safetensors"
SAFETENSORS_FORMAT = "hypernet"
SAFETENSORS_FORMAT_VERSION = "1"
# Zip members every torch since 1.6 reads, and the only ones every webui release's restricted loader accepts.
_WEBUI_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|\.data/serialization_id|(data\.pkl))$")
_KEEP_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
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
    path = Path(path)
    mode = _new_file_mode(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HypernetError(f"{path}: cannot write here ({exc.strerror or exc}); choose another folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), src.read(info))
    return out.getvalue()


def _cpu_state(module) -> "collections.OrderedDict":
    return collections.OrderedDict((k, v.detach().to("cpu", torch.float32).contiguous().clone())
                                   for k, v in module.state_dict().items())


def metadata_dict(hn: Hypernetwork) -> dict:
    """The 13 string keys of the webui's .pt layout, with the webui's types."""
    c = hn.config
    ds = list(c.dropout_structure)
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
        "use_dropout": bool(c.use_dropout),
        "dropout_structure": [float(v) for v in ds],
        "last_layer_dropout": bool(len(ds) >= 2 and ds[-2] != 0),
        "optional_info": hn.optional_info or None,
    }


def _check_savable(hn: Hypernetwork, path) -> None:
    if not isinstance(hn, Hypernetwork):
        raise HypernetError(f"{path}: expected a Hypernetwork to save, got {type(hn).__name__}")
    if not hn.is_finite():
        raise HypernetError(f"{path}: not saved, the hypernetwork has NaN or infinite weights (training diverged?)")


def to_pt_bytes(hn: Hypernetwork) -> bytes:
    state: dict = {}
    for dim in hn.dims:
        k, v = hn.modules_for(dim)
        state[dim] = (_cpu_state(k), _cpu_state(v))
    state.update(metadata_dict(hn))
    return webui_torch_bytes(state)


def to_safetensors_bytes(hn: Hypernetwork) -> bytes:
    from safetensors.torch import save as st_save
    tensors = {}
    for dim in hn.dims:
        for which, module in zip("kv", hn.modules_for(dim)):
            for key, value in _cpu_state(module).items():
                tensors[f"{dim}.{which}.{key}"] = value
    meta = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_FORMAT_VERSION,
            "hypernet": json.dumps(metadata_dict(hn))}
    return st_save(tensors, metadata=meta)


def save(hn: Hypernetwork, path, *, overwrite: bool = True) -> str:
    """Write hn to .pt (webui layout) or .safetensors (by suffix), atomically; returns the path."""
    path = Path(path)
    _check_savable(hn, path)
    suffix = path.suffix.lower()
    if suffix == ST_SUFFIX:
        data = to_safetensors_bytes(hn)
    elif suffix in PT_SUFFIXES:
        data = to_pt_bytes(hn)
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
    """Write <path>.optim the webui's way, with the hash of the file it belongs to (extra keys: the webui ignores them)."""
    data = {"optimizer_name": optimizer_name, "hash": shorthash(path), "optimizer_state_dict": optimizer_state,
            **(extra or {})}
    target = optim_path(path)
    atomic_write(target, webui_torch_bytes(data))
    return target


# ---------------------------------------------------------------------------------------------- reading
def _torch_load(path) -> object:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise FileFormatError(path, "file not found") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot read ({exc.strerror or exc})") from None
    if not head:
        raise FileFormatError(path, "file is empty (an interrupted download or save?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"(?:Unsupported global|unsupported GLOBAL|Unsupported class)[^\n]*", text)
        if found:
            raise UnsafeFileError(path, f"refused: the file may be malicious ({found.group(0).strip()}); a "
                                        "hypernetwork holds only tensors and plain values, so it was not loaded and "
                                        "nothing in it ran") from None
        detail = text.split("\n")[-1].strip() if "Weights only load failed" in text else _short(exc)
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({detail})") from None
    except Exception as exc:  # torch raises many types for truncated or garbage archives
        raise FileFormatError(path, f"not a readable PyTorch file, truncated or corrupt ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return (first[:200] + "...") if len(first) > 200 else first


def _what_is_it(obj: dict) -> str:
    keys = [k for k in obj.keys() if isinstance(k, str)]
    if "string_to_param" in keys or "emb_params" in keys:
        return " It looks like a textual-inversion embedding; put it in the embeddings folder."
    if any("lora" in k for k in keys[:50]):
        return " It looks like a LoRA; put it in the Lora folder."
    if "state_dict" in keys or any(k.startswith("model.diffusion_model") for k in keys[:50]):
        return " It looks like a model checkpoint."
    return ""


def _meta_get(meta: dict, key: str, default, types, path):
    value = meta.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise FileFormatError(path, f"metadata {key!r} should be {_type_names(types)}, found {value!r}")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def config_from_metadata(meta: dict, dims: list, path) -> CreateOptions:
    """Creation options from a file's string keys, with the webui's defaults for missing keys."""
    stem = Path(path).stem
    structure = _meta_get(meta, "layer_structure", [1, 2, 1], (list, tuple), path)
    activation = _meta_get(meta, "activation_func", None, str, path) or "linear"
    if activation.lower() not in ACTIVATIONS:
        raise FileFormatError(path, f"activation {activation!r} is not supported; known: {', '.join(ACTIVATIONS)}")
    init = _meta_get(meta, "weight_initialization", "Normal", str, path)
    dropout = _meta_get(meta, "dropout_structure", None, (list, tuple), path)
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
    for candidate in (name, stem, "hypernetwork"):
        try:
            return CreateOptions(name=candidate, **fields)
        except ConfigError as exc:
            if exc.field != "name":
                raise FileFormatError(path, f"metadata {exc}") from None
    raise FileFormatError(path, "cannot determine a name")  # unreachable: "hypernetwork" is valid


def _prepare_state(sd, path, dim: int, which: str) -> dict:
    if not isinstance(sd, dict):
        raise FileFormatError(path, f"width {dim} ({which}): expected a state dict, found {type(sd).__name__}")
    out = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FileFormatError(path, f"width {dim} ({which}): entry {key!r} is not a named tensor")
        if not value.is_floating_point():
            raise FileFormatError(path, f"width {dim} ({which}): {key} has dtype {value.dtype}, expected floats")
        out[_NAI_RENAMES.get(key, key)] = value
    return out


def _load_module(module, sd: dict, path, dim: int, which: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra)}" if extra else "") if part)
        raise FileFormatError(path, f"width {dim} ({which}): {detail}. The weights do not match the file's "
                                    "layer_structure / activation_func / is_layer_norm / dropout metadata")
    for key, tensor in expected.items():
        if tuple(sd[key].shape) != tuple(tensor.shape):
            raise FileFormatError(path, f"width {dim} ({which}): {key} has shape {list(sd[key].shape)}, expected "
                                        f"{list(tensor.shape)} for this width and layer structure")
        if not bool(torch.isfinite(sd[key]).all()):
            raise FileFormatError(path, f"width {dim} ({which}): {key} contains NaN or infinite values (the "
                                        "training that made it diverged); use an earlier saved copy")
    module.load_state_dict({k: v.to(torch.float32).clone() for k, v in sd.items()}, strict=True, assign=True)


def hypernetwork_from_state(obj, path) -> Hypernetwork:
    """Build a Hypernetwork from an unpickled webui/NovelAI dict, checking every key and shape."""
    if not isinstance(obj, dict):
        raise FileFormatError(path, f"expected a dict of widths to (k, v) weights, found {type(obj).__name__}")
    layers = {k: v for k, v in obj.items() if type(k) is int}
    if not layers:
        raise FileFormatError(path, "holds no hypernetwork layers (no integer width keys)." + _what_is_it(obj))
    bad = [k for k in layers if k <= 0]
    if bad:
        raise FileFormatError(path, f"invalid layer width(s) {bad}")
    meta = {k: v for k, v in obj.items() if isinstance(k, str)}
    config = config_from_metadata(meta, sorted(layers), path)
    step = _meta_get(meta, "step", 0, int, path)
    with torch.device("meta"):
        hn = Hypernetwork(config)
    for dim in config.dims:
        pair = layers[dim]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise FileFormatError(path, f"width {dim}: expected a (k, v) pair of state dicts, "
                                        f"found {type(pair).__name__}")
        for which, module, sd in zip(("k", "v"), hn.modules_for(dim), pair):
            _load_module(module, _prepare_state(sd, path, dim, which), path, dim, which)
    for module in hn.modules():
        # PReLU etc. have no registered state beyond weights; any meta tensor left would be a layout bug.
        for name, param in module.named_parameters(recurse=False):
            if param.is_meta:
                raise FileFormatError(path, f"parameter {name} was not in the file")
    hn.step = step
    hn.sd_checkpoint = meta.get("sd_checkpoint") if isinstance(meta.get("sd_checkpoint"), str) else None
    hn.sd_checkpoint_name = meta.get("sd_checkpoint_name") if isinstance(meta.get("sd_checkpoint_name"), str) else None
    hn.optional_info = meta.get("optional_info") if isinstance(meta.get("optional_info"), str) else None
    hn.extra_metadata = {k: v for k, v in meta.items() if k not in metadata_dict(hn)}
    hn.requires_grad_(False)
    hn.eval()
    hn.filename = str(path)
    return hn


def _load_safetensors(path) -> Hypernetwork:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except FileNotFoundError:
        raise FileFormatError(path, "file not found") from None
    except Exception as exc:
        raise FileFormatError(path, f"not a readable safetensors file, truncated or corrupt ({_short(exc)})") from None
    if header.get("format") != SAFETENSORS_FORMAT:
        raise FileFormatError(path, "is a safetensors file without hypernetwork metadata (header 'format' is "
                                    f"{header.get('format')!r}, expected {SAFETENSORS_FORMAT!r}); is it a LoRA "
                                    "or a checkpoint?")
    try:
        meta = json.loads(header.get("hypernet", "{}"))
    except json.JSONDecodeError as exc:
        raise FileFormatError(path, f"header 'hypernet' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "header 'hypernet' must be a JSON object")
    obj: dict = {k: v for k, v in meta.items() if isinstance(k, str)}
    pairs: dict = {}
    for key, tensor in tensors.items():
        found = re.match(r"^(\d+)\.([kv])\.(.+)$", key)
        if not found:
            raise FileFormatError(path, f"unexpected tensor name {key!r}; expected '<width>.<k|v>.linear.<i>.<param>'")
        dim, which, rest = int(found.group(1)), found.group(2), found.group(3)
        pairs.setdefault(dim, ({}, {}))[0 if which == "k" else 1][rest] = tensor
    obj.update(pairs)
    return hypernetwork_from_state(obj, path)


def load(path, *, with_optimizer: bool = False) -> Hypernetwork:
    """Read a hypernetwork from .pt (webui or NovelAI layout) or .safetensors; never runs code from the file."""
    path = Path(path)
    if path.is_dir():
        raise FileFormatError(path, "is a folder, expected a .pt or .safetensors file")
    if path.suffix.lower() == ".optim":
        raise FileFormatError(path, "is an optimizer sidecar, not a hypernetwork; load the .pt beside it")
    if path.suffix.lower() == ST_SUFFIX:
        hn = _load_safetensors(path)
    else:
        hn = hypernetwork_from_state(_torch_load(path), path)
    if with_optimizer:
        state = load_optimizer(path)
        if state is not None:
            hn.optimizer_name = state["optimizer_name"]
            hn.optimizer_state_dict = state["optimizer_state_dict"]
            hn.optimizer_extra = {k: v for k, v in state.items()
                                  if k not in ("optimizer_name", "hash", "optimizer_state_dict")}
    return hn


def load_optimizer(path, *, expected_hash: Optional[str] = None) -> Optional[dict]:
    """The .optim sidecar of `path` if it exists and its hash matches the file; else None."""
    sidecar = Path(optim_path(path))
    if not sidecar.exists():
        return None
    data = _torch_load(sidecar)
    if not isinstance(data, dict) or not isinstance(data.get("optimizer_state_dict"), dict):
        raise FileFormatError(sidecar, "is not an optimizer sidecar (no optimizer_state_dict)")
    wanted = expected_hash or shorthash(path)
    if data.get("hash") != wanted:
        return None
    name = data.get("optimizer_name")
    return {**data, "optimizer_name": name if isinstance(name, str) else "AdamW"}


# ---------------------------------------------------------------------------------------------- webui check
class _WebuiUnpickler(pickle.Unpickler):
    """The webui's RestrictedUnpickler allow-list (A1111-FACTS.md section 11), for checking our own output."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "IntStorage"), ("torch", "LongStorage"),
        ("torch", "DoubleStorage"), ("torch", "ByteStorage"), ("torch", "BFloat16Storage"), ("torch", "float32"),
        ("torch.nn.modules.container", "ParameterDict"),
        ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"), ("numpy", "dtype"),
        ("numpy", "ndarray"), ("_codecs", "encode"), ("builtins", "set"),
    }

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent id {saved_id!r} is not a storage")
        return None

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        return {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set}.get(
            (module, name), _placeholder)


class _Placeholder:
    """Stands in for a tensor or storage; the check only needs the pickle's structure."""


def _placeholder(*args, **kwargs):
    return _Placeholder()


def webui_check(path) -> Optional[str]:
    """None if the webui's restricted loader (safe.py) would accept the file, else the reason it refuses."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                if not _WEBUI_MEMBER.match(name):
                    return f"zip member {name!r} is not allowed"
            pkl = [n for n in names if n.endswith("/data.pkl")]
            if len(pkl) != 1:
                return "expected exactly one data.pkl"
            with archive.open(pkl[0]) as fh:
                _WebuiUnpickler(fh).load()
    except zipfile.BadZipFile:
        try:
            with open(path, "rb") as fh:
                unpickler = _WebuiUnpickler(fh)
                for _ in range(5):
                    unpickler.load()
        except Exception as exc:
            return str(exc)
    except Exception as exc:
        return str(exc)
    return None
