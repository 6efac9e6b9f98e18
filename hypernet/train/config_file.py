"""Run files for `python -m hypernet train --config FILE`: TOML or JSON holding any training option, or a run
folder's settings.json to repeat that run. Keys are option names (`learning_rate`, or the flag spelling
`learning-rate`); tables only group keys for the reader (`[train]` steps = 2000 is steps = 2000)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from ..bounds import MAX_CONFIG_BYTES, check_structure, parse_json, short_error
from ..errors import HypernetError


def _parse(path: Path) -> dict:
    """The file's top-level table: TOML by the .toml suffix, else JSON; measured (size, values, nesting) before
    either parser sees it."""
    where = f"--config {path}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise HypernetError(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    check_structure(where, raw, "the file", MAX_CONFIG_BYTES)
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise HypernetError(f"--config {path}: reading TOML on this Python needs `pip install tomli`; "
                                    "or write the file as JSON") from None
        try:
            data = tomllib.loads(raw.decode("utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise HypernetError(f"{where}: not valid TOML ({short_error(exc)})") from None
    else:
        data = parse_json(where, raw, "the file (JSON; name TOML files *.toml)", MAX_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise HypernetError(f"{where}: expected a table of options, found {type(data).__name__}")
    return data


def section(settings: dict, key: str) -> dict:
    """The table `key` of a run's settings.json ("options", "model", ...), {} when it is missing or not a table."""
    value = settings.get(key)
    return value if isinstance(value, dict) else {}


def _from_settings(data: dict) -> dict:
    """The options a run folder's settings.json records, as a run file: the same run again, with its seed."""
    out = {k: v for k, v in data["options"].items() if v is not None}
    if data.get("seed") is not None:
        out["seed"] = data["seed"]
    if data.get("source"):
        out["hypernetwork"] = data["source"]  # a continued file: continue it again, its architecture is fixed
    elif isinstance(data.get("hypernetwork"), dict):
        out.update({k: v for k, v in data["hypernetwork"].items() if v is not None})
    model = section(data, "model")
    if model.get("path"):
        out["model"] = model["path"]
    return out


def _flatten(data: dict, path: Path) -> dict:
    """Keys of one-level tables lifted to the top, dashes read as underscores; a key given twice is an error."""
    out = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in items:
            if isinstance(item, dict):
                raise HypernetError(f"--config {path}: {str(key)[:40]}.{str(name)[:40]} is a nested table; keep "
                                    "tables one level deep")
            name = str(name).replace("-", "_")
            if name in out:
                raise HypernetError(f"--config {path}: {name[:40]} is given twice")
            out[name] = item
    return out


def read_config(path, known: Iterable[str]) -> dict:
    """Option name -> value from a run file; HypernetError naming unknown keys (a typo never passes silently)."""
    path = Path(str(path)).expanduser()
    data = _parse(path)
    if isinstance(data.get("options"), dict) and "started" in data:
        data = _from_settings(data)
    values = {k: v for k, v in _flatten(data, path).items() if v is not None}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise HypernetError(f"--config {path}: unknown option(s) {', '.join(k[:40] for k in unknown[:10])}"
                            f"{' ...' if len(unknown) > 10 else ''}; see python -m hypernet train --help for the names")
    return values


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def write_config(path, values: dict) -> str:
    """Write option name -> value as TOML (.toml) or JSON (anything else); read_config reads it back."""
    from ..fileformat.files import atomic_write
    path = Path(str(path)).expanduser()
    values = {k: v for k, v in values.items() if v is not None}
    if path.suffix.lower() == ".toml":
        text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
    else:
        text = json.dumps(values, indent=2) + "\n"
    atomic_write(path, text.encode("utf-8"))
    return str(path)
