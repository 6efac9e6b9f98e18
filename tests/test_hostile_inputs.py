"""Hostile inputs, round two: each class of issue 21 built here from raw bytes, and refused with an error that names
the file or field. Files come from tests/crafted.py; none is read from outside the suite."""
import io
import json
import os
import struct
import subprocess
import sys
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import crafted as c
import hypernet
from hypernet import bounds
from hypernet.train import config_file
from hypernet.fileformat import files
from hypernet.config import CreateOptions, TrainOptions
from hypernet.fileformat.container import Inert, read as read_container, webui_refusal
from hypernet.errors import ConfigError, FileFormatError, HypernetError
from hypernet.ui import metadata

ROOT = Path(__file__).resolve().parents[1]


def _readers(path, layout=False):
    """Each way a file from outside is read: the full load, the cards' header read, and (unless the fault is in
    the hypernetwork's layout, which only those check) the container read behind the webui check and --model."""
    yield "load", lambda: hypernet.load(path)
    yield "inspect", lambda: files.inspect(path)
    yield "card", lambda: metadata.read(str(path))
    if not layout:
        yield "container", lambda: read_container(path)


def _refused_by_all(path, *words, layout=False):
    """Every reader raises a FileFormatError naming `path` and containing each of `words`."""
    messages = []
    for name, read in _readers(path, layout):
        with pytest.raises(FileFormatError) as info:
            read()
        text = str(info.value)
        assert str(path) in text and all(w in text for w in words), (name, text)
        messages.append(text)
    assert len(messages) == (3 if layout else 4)
    return messages[0]


def _write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _state(dims=(16,)):
    """The webui-layout dict of a small hypernetwork, as torch.load returns it."""
    hn = hypernet.create(dims=list(dims), seed=0)
    return torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)


def _with_sidecar(tmp_path, name, pickle_bytes, hash_in_file=True):
    """A hypernetwork file and a crafted .optim beside it whose pickle (optionally) carries the file's hash."""
    path = tmp_path / name
    hypernet.create(dims=[16], seed=0).save(path)
    digest = files.shorthash(path)
    pkl = pickle_bytes[:-1] + (c.text(digest) + b"0" if hash_in_file else b"") + b"."  # pushed, then dropped
    Path(files.optim_path(path)).write_bytes(c.zip_pt(pkl))
    return path


# ---------------------------------------------------------------------------------------------- 1. shared, cyclic
def test_a_list_that_holds_itself_is_refused_by_every_reader(tmp_path):
    path = _write(tmp_path, "cycle.pt", c.zip_pt(c.self_holding_list()))
    _refused_by_all(path, "holds itself")


def test_a_dag_of_shared_lists_is_walked_once(tmp_path):
    """60 levels, each list holding the next twice: 2**60 paths, 60 objects. It is read, then refused for its
    layout, not walked path by path."""
    path = _write(tmp_path, "dag.pt", c.zip_pt(c.shared_dag(60)))
    _refused_by_all(path, "expected a dict", layout=True)
    assert len(read_container(path).order) == 61


def test_a_cyclic_optimizer_sidecar_is_refused(tmp_path):
    path = _with_sidecar(tmp_path, "h.pt", c.self_holding_list())
    with pytest.raises(FileFormatError, match="holds itself") as info:
        hypernet.load(path, with_optimizer=True)
    assert str(path) + ".optim" in str(info.value)


def test_shared_tensors_are_materialised_once(tmp_path):
    t = torch.arange(4.0)
    shared = [t, t]
    path = tmp_path / "shared.pt"
    torch.save({"a": shared, "b": shared}, path)
    from hypernet.fileformat.container import load_object
    obj = load_object(path)
    assert obj["a"] is obj["b"] and torch.equal(obj["a"][0], t)


# ---------------------------------------------------------------------------------------------- 2. memo, legacy, optim
@pytest.mark.parametrize("make,words", [
    (lambda: c.zip_pt(c.memo_flood(2 << 20)), "objects"),
    (lambda: c.legacy_pt(c.memo_flood(2 << 20)), "objects"),
    (lambda: c.zip_pt(c.dup_flood(2 << 20)), "instructions"),
    (lambda: c.legacy_pt(c.dup_flood(2 << 20)), "instructions"),
])
def test_amplifying_pickles_are_refused_while_parsed(tmp_path, make, words):
    path = _write(tmp_path, "flood.pt", make())
    _refused_by_all(path, "refused unread", words)


def test_a_legacy_pickle_cannot_claim_a_huge_string(tmp_path):
    """BINUNICODE8 claiming 2**60 bytes: refused before a buffer of that size is asked for."""
    path = _write(tmp_path, "claim.pt", c.legacy_pt(b"\x80\x04\x8d" + struct.pack("<Q", 1 << 60) + b"x."))
    _refused_by_all(path, "longer than")


def test_a_sidecar_is_parsed_only_when_its_hash_and_size_fit(tmp_path, monkeypatch):
    parsed = []
    real = files.load_object
    monkeypatch.setattr(files, "load_object", lambda p: parsed.append(p) or real(p))
    stale = _with_sidecar(tmp_path, "stale.pt", c.memo_flood(1 << 20), hash_in_file=False)
    assert files.load_optimizer(stale) is None and parsed == []          # skipped unread: no hash in its bytes
    big = tmp_path / "big.pt"
    hypernet.create(dims=[16], seed=0).save(big)
    Path(files.optim_path(big)).write_bytes(b"\0" * (20 * big.stat().st_size + (2 << 20)))
    with pytest.raises(FileFormatError, match="more than the optimizer state") as info:
        files.load_optimizer(big)
    assert str(big) + ".optim" in str(info.value) and parsed == []
    flood = _with_sidecar(tmp_path, "flood.pt", c.memo_flood(1 << 20))
    with pytest.raises(FileFormatError, match="refused unread"):
        files.load_optimizer(flood)
    assert len(parsed) == 1


def test_a_real_sidecar_still_resumes(tmp_path):
    path = tmp_path / "h.pt"
    hypernet.create(dims=[16], seed=0).save(path)
    files.save_optimizer(path, "AdamW", {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []})
    assert hypernet.load(path, with_optimizer=True).optimizer_state_dict["state"][0]["step"] == 3


# ---------------------------------------------------------------------------------------------- 3. big metadata lists
def test_a_huge_layer_structure_is_refused_before_a_module_is_built(tmp_path, monkeypatch):
    state = _state()
    state["layer_structure"] = [1.0] * 100_000
    pt = tmp_path / "layers.pt"
    torch.save(state, pt)
    meta = files.metadata_dict(hypernet.create(dims=[16], seed=0)) | {"layer_structure": [1.0] * 100_000}
    st = _write(tmp_path, "layers.safetensors", _safetensors_with_meta(json.dumps(meta)))
    monkeypatch.setattr(hypernet.network.Hypernetwork, "__init__",
                        lambda *a, **k: pytest.fail("a module was built"))
    _refused_by_all(pt, "layer_structure", "100,000 entries", layout=True)
    _refused_by_all(st, "layer_structure", "100,000 entries", layout=True)


def _safetensors_with_meta(hypernet_json: str) -> bytes:
    from safetensors.torch import save
    hn = hypernet.create(dims=[16], seed=0)
    tensors = {f"16.{w}.{k}": v for w, m in zip("kv", hn.modules_for(16)) for k, v in m.state_dict().items()}
    return save(tensors, metadata={"format": "hypernet", "hypernet": hypernet_json})


def test_many_widths_and_wide_multipliers_are_refused_by_count(tmp_path):
    state = _state()
    for width in range(1, 200):
        state[width] = state[16]
    path = tmp_path / "widths.pt"
    torch.save(state, path)
    _refused_by_all(path, "199 widths", layout=True)
    with pytest.raises(ConfigError, match="at most 1024"):
        CreateOptions(dims=[16], layer_structure=[1, 1e308, 1])          # int(16 * 1e308) would overflow


# ---------------------------------------------------------------------------------------------- 4. huge integers
@pytest.mark.parametrize("key", ["activation_func", "step", "layer_structure", "name"])
def test_a_10000_digit_integer_anywhere_is_refused_while_parsed(tmp_path, key):
    state = _state()
    state[key] = "MARKER"
    path = _write(tmp_path, f"{key}.pt", c.with_marker(state, "MARKER", c.huge_int(10_000)))
    _refused_by_all(path, "integer", "128 bits")


def test_wide_integers_in_range_of_the_reader_are_range_checked_by_meaning(tmp_path):
    state = _state()
    state["step"] = 10 ** 30
    path = tmp_path / "step.pt"
    torch.save(state, path)
    _refused_by_all(path, "'step'", "outside 0 to 1,000,000,000", layout=True)
    state = _state()
    state[2 ** 100] = state.pop(16)
    path = tmp_path / "width.pt"
    torch.save(state, path)
    message = _refused_by_all(path, "invalid layer width", layout=True)
    assert "126765060022..." in message and "(31 digits)" in message


def test_a_shape_past_two_to_the_48_is_refused(tmp_path):
    path = _write(tmp_path, "shape.safetensors", c.safetensors(
        {"a": {"dtype": "F32", "shape": [10 ** 20], "data_offsets": [0, 4]}}, b"\0" * 4))
    _refused_by_all(path, "malformed shape")


def test_messages_never_format_an_unbounded_value():
    assert bounds.brief(10 ** 10_000) == "an integer of about 10,001 digits"
    assert bounds.brief(-(10 ** 100)) == "-100000000000... (101 digits)"
    assert len(bounds.brief("x" * 10 ** 6)) <= 83
    with pytest.raises(ConfigError, match=r"steps: .*\(5,000 characters\)"):
        TrainOptions(steps="9" * 5000)


# ---------------------------------------------------------------------------------------------- 5. JSON types
@pytest.mark.parametrize("entry,words", [
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unknown dtype a list"),
    ({"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}, "unknown dtype a dict"),
    ({"dtype": None, "shape": [1], "data_offsets": [0, 4]}, "unknown dtype None"),
    ({"dtype": "F32", "shape": {"0": 1}, "data_offsets": [0, 4]}, "malformed shape"),
    ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "malformed shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": "0-4"}, "malformed data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [True, 4]}, "malformed data_offsets"),
    (["F32", [1], [0, 4]], "expected an object"),
    ("F32", "expected an object"),
])
def test_wrong_json_types_in_a_safetensors_header_name_the_tensor(tmp_path, entry, words):
    path = _write(tmp_path, "types.safetensors", c.safetensors({"w": entry}, b"\0" * 4))
    _refused_by_all(path, "tensor 'w'", words)


@pytest.mark.parametrize("meta", [[1, 2], {"format": ["hypernet"]}, {"format": {"a": "b"}}, "text"])
def test_wrong_metadata_types_are_refused(tmp_path, meta):
    path = _write(tmp_path, "meta.safetensors", c.safetensors(
        {"__metadata__": meta, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
    for _, read in _readers(path, layout=True):
        with pytest.raises(FileFormatError):
            read()


# ---------------------------------------------------------------------------------------------- 6. depth
def test_a_50000_deep_sidecar_is_refused(tmp_path):
    path = _with_sidecar(tmp_path, "deep.pt", c.deep_lists(50_000))
    with pytest.raises(FileFormatError, match="nested too deeply") as info:
        files.load_optimizer(path)
    assert str(path) + ".optim" in str(info.value)


# ---------------------------------------------------------------------------------------------- 7. training options
@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model starts loading: every check must come first."""
    import hypernet.hosts.diffusers as d
    monkeypatch.setattr(d, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the check"))


def _cli_error(args, capsys):
    from hypernet.apps.cli import main
    assert main(args) != 0
    return capsys.readouterr().err


@pytest.mark.parametrize("suffix,text", [
    (".json", '{"steps": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    (".toml", "steps = " + "[" * 50_000 + "]" * 50_000 + "\n"),
    (".toml", "steps = " + "{a=" * 50_000 + "1" + "}" * 50_000 + "\n"),
])
def test_deeply_nested_run_files_are_refused_unparsed(tmp_path, suffix, text, no_model, capsys):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    with pytest.raises(HypernetError, match="nested too deeply") as info:
        config_file.read_config(path, ["steps"])
    assert str(path) in str(info.value)
    assert "nested too deeply" in _cli_error(["train", "--model", "m", "--config", str(path)], capsys)


@pytest.mark.parametrize("fields,words", [
    ({"width": 10 ** 9}, "width: must be at most 8,192"),
    ({"height": 32}, "height: must be at least 64"),
    ({"width": 100}, "width: must be a multiple of 8"),
    ({"steps": 10 ** 4000}, "steps: must be at most 1,000,000,000, got an integer of about 4,001 digits"),
    ({"steps": 1e300}, "steps: expected a whole number"),
    ({"steps": 2.5}, "steps: expected a whole number"),
    ({"steps": "1e9999"}, "steps: expected a whole number"),
    ({"log_dir": "logs\x00x"}, "log_dir:"),
    ({"output": "a" * 5000}, "output:"),
    ({"data": "d/" + "x" * 300}, "data:"),
])
def test_training_options_are_range_checked(fields, words):
    with pytest.raises(ConfigError) as info:
        TrainOptions(**fields)
    assert words in str(info.value)


def test_bad_run_file_values_fail_before_the_model_loads(tmp_path, no_model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (64, 64)).save(data / "a.png")
    for values, words in (({"log_dir": "x\u0000y"}, "NUL"), ({"steps": 1e300}, "steps"),
                          ({"width": 1_000_000_000}, "width"), ({"model": "m\u0000"}, "model")):
        run = tmp_path / "run.json"
        run.write_text(json.dumps({"model": "m", "data": str(data), **values}))
        assert words in _cli_error(["train", "--config", str(run)], capsys)


# ---------------------------------------------------------------------------------------------- 8. captions, images
def test_a_huge_caption_is_read_up_to_the_cap_with_a_warning_naming_it(tmp_path):
    from hypernet.train.data import read_caption
    image = tmp_path / "a.png"
    caption = tmp_path / "a.txt"
    with open(caption, "wb") as fh:
        fh.write(("é tag, " * 20_000).encode())                  # 180 KB, a character cut at the cap
        fh.truncate(50 << 20)                                     # 50 MB on disk, sparse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = read_caption(image)
    assert len(text.encode()) <= bounds.MAX_CAPTION_BYTES and text.startswith("é tag")
    assert any(str(caption) in str(w.message) and "65,536" in str(w.message) for w in caught)


def _png_16bit(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of zeros, compressed row by row (its decoded size never sits in this process)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_an_image_whose_decoded_size_passes_the_cap_is_skipped_by_name(tmp_path):
    from hypernet.train.data import DatasetError, load_image
    path = _write(tmp_path, "bomb.png", _png_16bit(13000, 13000))
    assert path.stat().st_size < 1 << 20                           # under Pillow's own pixel limit, too
    with pytest.raises(DatasetError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "MiB" in str(info.value)
    small = _write(tmp_path, "small.png", _png_16bit(64, 64))
    img, alpha = load_image(small)
    assert img.size == (64, 64) and img.mode == "RGB" and alpha is None


# ---------------------------------------------------------------------------------------------- 9. names
@pytest.mark.parametrize("name,words", [
    ("a\x00b", "control character"), ("n" * 300, "300 characters"), ("n" * (1 << 20), "1,048,576 characters"),
    ("a/b", "cannot be used"), ("..", "reserved"), ("CON", "reserved"), ("nul.backup", "reserved"),
    ("None", "reserved"),
])
def test_every_name_from_outside_is_checked_as_a_name(tmp_path, name, words):
    from hypernet.ui.actions import ActionError, create_file, keep_copy
    from hypernet.ui.state import LibraryState
    state = LibraryState(str(tmp_path / "hn"))
    (tmp_path / "hn").mkdir()
    state.log_folder = str(tmp_path / "logs")
    copy = tmp_path / "logs" / "run" / "copy-10.pt"
    copy.parent.mkdir(parents=True)
    hypernet.create(dims=[16], seed=0).save(copy)
    for action, fields in ((keep_copy, {"file": str(copy), "name": name}),
                           (create_file, {"name": name, "dims": [16]})):
        with pytest.raises(ActionError) as info:
            action(state, fields)
        assert (info.value.status, info.value.field) == (422, "name") and words in str(info.value), str(info.value)
        assert len(str(info.value)) < 500


@pytest.mark.parametrize("path", ["x\x00.pt", "d/" * 3000, "x" * 300 + ".pt"])
def test_paths_from_requests_are_field_errors(tmp_path, path):
    from hypernet.ui.actions import ActionError, keep_copy
    from hypernet.ui.state import LibraryState
    state = LibraryState(str(tmp_path))
    state.log_folder = str(tmp_path)
    with pytest.raises(ActionError) as info:
        keep_copy(state, {"file": path})
    assert (info.value.status, info.value.field) == (422, "file")


# ---------------------------------------------------------------------------------------------- 11. per-entry costs
def test_a_zip_directory_past_the_member_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import zipfile
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda *a, **k: pytest.fail("the directory was parsed"))
    path = _write(tmp_path, "members.pt", c.many_zip_entries(40_000))
    _refused_by_all(path, "zip directory")


def test_too_many_storages_or_tensors_are_refused_as_counted(tmp_path):
    path = _write(tmp_path, "storages.pt", c.legacy_storages(70_000))
    _refused_by_all(path, "more than 16,384 storages")
    path = _write(tmp_path, "tensors.safetensors", c.many_tensors_header(70_000))
    _refused_by_all(path, "values")
    path = _write(tmp_path, "views.pt", c.many_views(200_000))
    _refused_by_all(path, "more than 16,384 tensors")


def test_unknown_tags_cost_one_folder_scan_per_generation(tmp_path, monkeypatch):
    from hypernet.library import Library
    hypernet.create(dims=[16], seed=0).save(tmp_path / "real.pt")
    library = Library(tmp_path)
    scans = []
    real = Library.refresh
    monkeypatch.setattr(Library, "refresh", lambda self: scans.append(1) or real(self))
    with library.one_scan():
        for i in range(2000):
            with pytest.raises(hypernet.errors.NotFoundError):
                library.resolve(f"missing{i}")
        assert library.resolve("real").name == "real"
    assert len(scans) == 1
    hypernet.create(dims=[16], seed=0).save(tmp_path / "added.pt")
    with library.one_scan():                                       # the next generation sees a new file
        assert library.resolve("added").name == "added"
    assert len(scans) == 2


# ---------------------------------------------------------------------------------------------- 12. real checkpoints
@pytest.fixture
def fake_lightning(monkeypatch):
    """A stand-in `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` for pickling (lightning is not
    installed); removed again before anything is read."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)
    module.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": name})
    for part in ("pytorch_lightning", "pytorch_lightning.callbacks", name):
        monkeypatch.setitem(sys.modules, part, module if part == name else types.ModuleType(part))
    return module.ModelCheckpoint


def _sd14_like(path, fake_lightning):
    """A tiny SD1 .ckpt laid out as the v1.4 release: weights, and a ModelCheckpoint callback (a class as the
    dict key) whose state holds a numpy score and dtype."""
    import single_files as sf
    written = sf.build("sd1", 0)
    state = {"callbacks": {fake_lightning: {"monitor": None, "best_model_score": np.float64(0.25),
                                            "kth_dtype": np.dtype("f4"), "best_model_path": ""}},
             "state_dict": written.state, "global_step": 470000, "epoch": 6}
    torch.save(state, str(path))
    for name in [n for n in sys.modules if n.startswith("pytorch_lightning")]:
        del sys.modules[name]
    return written


def test_a_ckpt_with_lightning_callbacks_and_numpy_scores_reads_as_inert_data(tmp_path, fake_lightning):
    pytest.importorskip("ldm")
    path = tmp_path / "sd14.ckpt"
    _sd14_like(path, fake_lightning)
    assert "pytorch_lightning" not in sys.modules
    found = read_container(path)
    (key, callback), = found.obj["callbacks"].items()
    assert type(key) is Inert and key.name.endswith("ModelCheckpoint")
    score = callback["best_model_score"]
    assert type(score) is Inert and score.name.endswith("scalar") and score.args[1] == np.float64(0.25).tobytes()
    assert "ModelCheckpoint" not in (webui_refusal(found) or "")            # the webui's loader allows it too


def test_a_placeholder_runs_nothing(tmp_path):
    """Calling the callback class, or calling a numpy placeholder twice, is refused as code."""
    ops = c.PROTO + b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)R."
    path = _write(tmp_path, "call.pt", c.zip_pt(ops))
    with pytest.raises(hypernet.errors.UnsafeFileError, match="calls pytorch_lightning"):
        read_container(path)
    ops = c.PROTO + b"cnumpy\ndtype\n" + c.text("f8") + b"\x85R)R."
    path = _write(tmp_path, "twice.pt", c.zip_pt(ops))
    with pytest.raises(hypernet.errors.UnsafeFileError, match="calls numpy.dtype"):
        read_container(path)


def test_training_starts_from_an_sd14_like_ckpt(tmp_path, fake_lightning):
    pytest.importorskip("ldm")
    from hypernet.tiny.demo import make_style_dataset
    model = tmp_path / "sd14.ckpt"
    _sd14_like(model, fake_lightning)
    data = make_style_dataset(tmp_path / "data", count=2)
    out = tmp_path / "out.safetensors"
    from test_single_file import _train
    _train(model, data, out, tmp_path)                             # the CLI, offline, as for any single file
    assert hypernet.load(out).step == 2


# ---------------------------------------------------------------------------------------------- peak memory
_MEASURE = """
import json, os, resource, sys
import hypernet
from hypernet.fileformat import files

def peak(path):
    read, write = os.pipe()
    if os.fork() == 0:
        try:
            files.inspect(path)
        except hypernet.HypernetError:
            pass
        hypernet.webui_check(path)
        os.write(write, str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        value = fh.read()
    os.wait()
    return int(value)

plain = sys.argv[1]
files.inspect(plain)
hypernet.webui_check(plain)
out = {"plain": peak(plain)}
for path in sys.argv[2:]:
    out[path] = peak(path)
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="measures forked children")
def test_peak_memory_of_a_check_stays_within_the_bound(tmp_path):
    """Each crafted file checked (header read and webui check) in a child forked from a warm process: its peak
    resident memory over a plain check stays within max(64 MB, 2x the file's size)."""
    plain = tmp_path / "plain.pt"
    hypernet.create(dims=[16], seed=0).save(plain)
    crafted = {
        "memo.pt": c.zip_pt(c.memo_flood(16 << 20)),
        "memo_legacy.pt": c.legacy_pt(c.memo_flood(16 << 20)),
        "dup.pt": c.zip_pt(c.dup_flood(16 << 20)),
        "storages.pt": c.legacy_storages(200_000),
        "views.pt": c.many_views(200_000),
        "members.pt": c.many_zip_entries(100_000),
        "tensors.safetensors": c.many_tensors_header(1_000_000),
    }
    paths = [str(_write(tmp_path, name, data)) for name, data in crafted.items()]
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(plain), *paths], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(peaks) == len(crafted) + 1
    for path in paths:
        allowed = max(64 << 20, 2 * os.path.getsize(path))
        assert peaks[path] - peaks["plain"] <= allowed, (path, peaks[path] - peaks["plain"], allowed)


# ---------------------------------------------------------------------------------------------- found by the probe
def test_a_zip_directory_whose_offsets_point_outside_the_file_is_refused(tmp_path):
    data = bytearray(c.zip_pt(c.PROTO + b"}."))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<L", data, end + 16, 10 ** 9)                  # the directory "starts" 1 GB in
    _refused_by_all(_write(tmp_path, "offset.pt", bytes(data)), "outside the file")


def test_a_megabyte_string_in_a_header_is_measured_without_backtracking_state():
    import tracemalloc
    raw = b'{"a": "' + b"x" * (4 << 20) + b'\\"]", "b": [1, {"c": "[["}]}'
    tracemalloc.start()
    try:
        values, depth = bounds.measure(raw)
        assert depth == 3 and values < 20
        assert tracemalloc.get_traced_memory()[1] < 3 * len(raw)
    finally:
        tracemalloc.stop()


def test_long_lists_in_requests_are_refused_by_count():
    from hypernet.config import CompareOptions
    with pytest.raises(ConfigError, match="at most 1,000"):
        TrainOptions(learning_rate=",".join(f"1e-4:{i}" for i in range(1, 5000)))
    with pytest.raises(ConfigError, match="at most 1,000"):
        CompareOptions(strengths="0," * 5000)
    with pytest.raises(ConfigError, match="more than 64"):
        CreateOptions(dims=[16] * 100_000)


def test_preview_prompt_numbers_are_range_checked():
    from hypernet.train.sample_prompts import parse_line
    for line, words in (("a --w 1000000000", "at most 8,192"), ("a --s 1e400", "whole number"),
                        ("a --l 1e999", "finite"), ("a --d " + "9" * 30, "(30 digits)")):
        with pytest.raises(ConfigError) as info:
            parse_line(line, "p.txt:1")
        assert "p.txt:1" in str(info.value) and words in str(info.value), str(info.value)
