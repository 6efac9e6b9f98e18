"""Files: the webui's reference fixtures, our .pt / .safetensors / .optim output, and hostile input."""
import collections
import errno
import io
import json
import os
import pickle
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file

import hypernet
from hypernet.fileformat import files
from hypernet.errors import FileFormatError, HypernetError, UnsafeFileError

META_TYPES = {"step": int, "name": str, "layer_structure": list, "activation_func": str, "is_layer_norm": bool,
              "weight_initialization": str, "sd_checkpoint": type(None), "sd_checkpoint_name": type(None),
              "activate_output": bool, "use_dropout": bool, "dropout_structure": list,
              "last_layer_dropout": bool, "optional_info": type(None)}


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return load_file(str(fixtures_dir / "expected.safetensors"))


def _small(**kw):
    kw.setdefault("dims", [8, 12])
    return hypernet.create(seed=0, **kw)


def _perturb(hn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hn.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return hn


def _same(a, b):
    sa = {k: v for k, v in a.state_dict().items()}
    sb = {k: v for k, v in b.state_dict().items()}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------ reference fixtures
def test_fixture_metadata_is_read_like_the_webui(fixtures_dir, manifest):
    for fname, m in manifest["files"].items():
        hn = hypernet.load(fixtures_dir / fname)
        c = hn.config
        assert hn.dims == m["dims"], fname
        assert c.layer_structure == m["layer_structure"], fname
        assert c.activation == (m["activation_func"] or "linear"), fname
        assert c.layer_norm == m["is_layer_norm"], fname
        assert c.dropout_structure == m["dropout_structure"], fname
        assert c.activate_output == m["activate_output"], fname
        assert hn.step == m["step"], fname


def test_fixture_outputs_reproduced(fixtures_dir, manifest, expected):
    checked = 0
    for fname, m in manifest["files"].items():
        hn = hypernet.load(fixtures_dir / fname)
        stem = fname[:-3]
        for case in m["cases"]:
            x = expected[f"{stem}/{case['dim']}/x"]
            for s in case["strengths"]:
                k, v = hypernet.transform([(hn, s)], x)
                assert torch.allclose(k, expected[f"{stem}/{case['dim']}/{s}/k"], atol=1e-5, rtol=0), (fname, s)
                assert torch.allclose(v, expected[f"{stem}/{case['dim']}/{s}/v"], atol=1e-5, rtol=0), (fname, s)
                checked += 2
    assert checked == 2 * 3 * sum(len(m["cases"]) for m in manifest["files"].values())


def test_fixture_stack_reproduced(fixtures_dir, manifest, expected):
    for stack in manifest["stacks"]:
        members = [(hypernet.load(fixtures_dir / m["file"]), m["strength"]) for m in stack["members"]]
        for dim in stack["dims"]:
            x = expected[f"{stack['id']}/{dim}/x"]
            k, v = hypernet.transform(members, x)
            assert torch.allclose(k, expected[f"{stack['id']}/{dim}/k"], atol=1e-5, rtol=0)
            assert torch.allclose(v, expected[f"{stack['id']}/{dim}/v"], atol=1e-5, rtol=0)


def test_novelai_layout_and_missing_metadata_defaults(fixtures_dir):
    raw = torch.load(fixtures_dir / "legacy_nai.pt", weights_only=True)
    assert all(isinstance(k, int) for k in raw)  # no metadata at all
    hn = hypernet.load(fixtures_dir / "legacy_nai.pt")
    assert hn.config.activate_output is True  # the webui's default for files that do not say
    assert hn.name == "legacy_nai" and hn.step == 0
    assert [type(m).__name__ for m in hn.modules_for(40)[0].linear] == ["Linear", "Linear"]


def test_fixture_roundtrip_through_our_writer_keeps_outputs(fixtures_dir, tmp_path, expected):
    for fname in ("leakyrelu_norm_drop.pt", "swish_1221.pt", "linear_act_out.pt", "legacy_nai.pt"):
        hn = hypernet.load(fixtures_dir / fname)
        for suffix in (".pt", ".safetensors"):
            again = hypernet.load(hn.save(tmp_path / (fname + suffix)))
            assert _same(hn, again) and again.config == hn.config
            dim = hn.dims[0]
            x = expected[f"{fname[:-3]}/{dim}/x"]
            assert torch.allclose(hypernet.transform([(again, 0.6)], x)[0],
                                  expected[f"{fname[:-3]}/{dim}/0.6/k"], atol=1e-5)


# ------------------------------------------------------------------------------------------ our .pt layout
def _webui_style_module(dim, sd, meta):
    """The webui's HypernetworkModule construction, written out independently as a test oracle."""
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "linear": None, None: None}[meta["activation_func"]]
    ls, ds = meta["layer_structure"], meta["dropout_structure"]
    mods = []
    for i in range(len(ls) - 1):
        mods.append(torch.nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
        if act is not None and not (i >= len(ls) - 2 and not meta["activate_output"]):
            mods.append(act())
        if meta["is_layer_norm"]:
            mods.append(torch.nn.LayerNorm(int(dim * ls[i + 1])))
        if ds[i + 1] > 0:
            mods.append(torch.nn.Dropout(ds[i + 1]))
    module = torch.nn.Module()
    module.linear = torch.nn.Sequential(*mods)
    module.load_state_dict(sd, strict=True)
    return module.eval()


@pytest.mark.parametrize("kw", [dict(activation="relu"), dict(activation="tanh", layer_norm=True,
                                dropout_structure=[0, 0.2, 0.1, 0], layer_structure=[1, 2, 1.5, 1])])
def test_pt_has_webui_layout_and_passes_restricted_loader(tmp_path, kw):
    hn = _perturb(_small(name="style", **kw))
    hn.step = 42
    path = tmp_path / "style.pt"
    hn.save(path)
    assert hypernet.webui_check(path) is None
    with zipfile.ZipFile(path) as z:
        assert not any(n.endswith((".format_version", ".storage_alignment")) for n in z.namelist())
    raw = torch.load(path, weights_only=True)
    assert sorted(k for k in raw if isinstance(k, int)) == [8, 12]
    meta = {k: v for k, v in raw.items() if isinstance(k, str)}
    assert set(meta) == set(META_TYPES)
    for key, typ in META_TYPES.items():
        assert isinstance(meta[key], typ), key
    assert all(isinstance(v, float) for v in meta["layer_structure"])
    assert meta["step"] == 42 and meta["name"] == "style"
    assert meta["last_layer_dropout"] == (meta["dropout_structure"][-2] != 0)
    for dim in (8, 12):
        pair = raw[dim]
        assert isinstance(pair, tuple) and len(pair) == 2
        for which, sd in enumerate(pair):
            oracle = _webui_style_module(dim, sd, meta)
            x = torch.randn(3, dim)
            ours = hn.modules_for(dim)[which]
            assert torch.allclose(oracle.linear(x), ours.linear(x), atol=1e-6)


def test_webui_check_refuses_plain_torch_save_and_foreign_globals(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({8: ({}, {})}, plain)
    assert "not allowed" in hypernet.webui_check(plain)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_zip_with_pickle(pickle.dumps(os.getcwd)))
    assert "getcwd" in hypernet.webui_check(evil)  # refused, naming what it asked for


def test_safetensors_layout_and_equivalence(tmp_path):
    hn = _perturb(_small(activation="elu", layer_norm=True, dropout_structure=[0, 0.1, 0]))
    hn.optional_info = "made in a test"
    pt, sft = tmp_path / "a.pt", tmp_path / "a.safetensors"
    hn.save(pt)
    hn.save(sft)
    from safetensors import safe_open
    with safe_open(str(sft), "pt") as fh:
        header = fh.metadata()
        keys = set(fh.keys())
    assert header["format"] == "hypernet"
    meta = json.loads(header["hypernet"])
    assert set(meta) == set(META_TYPES) and meta["optional_info"] == "made in a test"
    assert "8.k.linear.0.weight" in keys and "12.v.linear.4.bias" in keys and "12.v.linear.5.weight" in keys
    a, b = hypernet.load(pt), hypernet.load(sft)
    assert _same(a, b) and a.config == b.config and a.optional_info == b.optional_info == "made in a test"
    assert _same(a, hn)


def test_save_refuses_unknown_suffix_and_nonfinite(tmp_path):
    hn = _small()
    with pytest.raises(HypernetError, match="unknown file type"):
        hn.save(tmp_path / "x.txt")
    with torch.no_grad():
        next(hn.parameters())[0] = float("nan")
    with pytest.raises(HypernetError, match="NaN"):
        hn.save(tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_save_without_overwrite_keeps_existing(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"old")
    with pytest.raises(HypernetError, match="already exists"):
        files.save(_small(), path, overwrite=False)
    assert path.read_bytes() == b"old"


# ------------------------------------------------------------------------------------------ .optim sidecar
def test_optim_sidecar_roundtrip_and_hash(tmp_path):
    hn = _small()
    hn.requires_grad_(True)
    opt = torch.optim.AdamW(hn.parameters(), lr=1e-3)
    sum(p.sum() for p in hn.parameters()).backward()
    opt.step()
    path = tmp_path / "x.pt"
    hn.save(path)
    sidecar = files.save_optimizer(path, "AdamW", opt.state_dict())
    assert sidecar == str(path) + ".optim"
    assert hypernet.webui_check(sidecar) is None
    raw = torch.load(sidecar, weights_only=True)
    assert set(raw) == {"optimizer_name", "hash", "optimizer_state_dict"}
    assert raw["hash"] == hypernet.shorthash(path) and len(raw["hash"]) == 10
    loaded = hypernet.load(path, with_optimizer=True)
    assert loaded.optimizer_name == "AdamW"
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state_dict)
    assert hypernet.load(path).optimizer_state_dict is None  # inference never reads it
    hn.step = 1
    hn.save(path)  # the file changes, the old sidecar no longer matches
    assert files.load_optimizer(path) is None


def test_library_like_names_refuse_optim_as_hypernetwork(tmp_path):
    path = tmp_path / "x.pt.optim"
    path.write_bytes(b"x")
    with pytest.raises(FileFormatError, match="optimizer sidecar"):
        hypernet.load(path)


# ------------------------------------------------------------------------------------------ hostile files
def _zip_with_pickle(payload: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _SystemCall:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("gadget", [_WritesMarker, _SystemCall])
@pytest.mark.parametrize("container", ["zip", "raw", "torch"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, gadget, container):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    obj = {768: ({"linear.0.weight": gadget(marker)}, {}), "name": "evil"}
    if container == "zip":
        path.write_bytes(_zip_with_pickle(pickle.dumps(obj, protocol=2)))
    elif container == "raw":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    with pytest.raises(HypernetError) as info:
        hypernet.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    if container != "raw":
        assert isinstance(info.value, UnsafeFileError)
        assert "malicious" in str(info.value)
    from hypernet.apps.cli import main
    assert main(["check", str(path)]) == 2
    assert not marker.exists()


def test_legacy_non_zip_torch_format_loads(tmp_path):
    hn = _perturb(_small())
    state = torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert _same(hypernet.load(path), hn)


@pytest.mark.parametrize("obj,words", [
    ([1, 2, 3], "expected a dict"),
    ({"name": "x"}, "no hypernetwork layers"),
    ({"string_to_param": {"*": torch.zeros(1)}}, "embedding"),
    ({8: {"linear.0.weight": torch.zeros(16, 8)}}, "(k, v) pair"),
    ({8: ({"linear.0.weight": torch.zeros(16, 8)}, {})}, "missing"),
    ({8: ("nope", {})}, "expected a state dict"),
    ({8: ({"linear.0.weight": 3}, {})}, "not a named tensor"),
    ({-8: ({}, {})}, "invalid layer width"),
    ({8: ({}, {}), "layer_structure": "1,2,1"}, "layer_structure"),
    ({8: ({}, {}), "layer_structure": [2, 1]}, "start and end with 1"),
    ({8: ({}, {}), "activation_func": "frobnicate"}, "not supported"),
    ({8: ({}, {}), "step": "ten"}, "'step' should be int"),
])
def test_wrong_layouts_raise_clear_errors(tmp_path, obj, words):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(FileFormatError) as info:
        hypernet.load(path)
    assert words in str(info.value) and str(path) in str(info.value)


def _state_of(hn):
    return torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)


def test_wrong_shape_unexpected_key_nan_and_int_dtype(tmp_path):
    base = _state_of(_small(dims=[8]))
    cases = []
    s = _state_of(_small(dims=[8])); s[8][0]["linear.0.weight"] = torch.zeros(16, 9); cases.append((s, "shape"))
    s = _state_of(_small(dims=[8])); s[8][1]["linear.9.weight"] = torch.zeros(1); cases.append((s, "unexpected"))
    s = _state_of(_small(dims=[8])); s[8][0]["linear.0.bias"][0] = float("inf"); cases.append((s, "NaN or infinite"))
    s = _state_of(_small(dims=[8])); s[8][0]["linear.0.bias"] = torch.zeros(16, dtype=torch.int64)
    cases.append((s, "dtype"))
    s = dict(base); s["is_layer_norm"] = True; cases.append((s, "missing"))
    for i, (state, words) in enumerate(cases):
        path = tmp_path / f"bad{i}.pt"
        torch.save(state, path)
        with pytest.raises(FileFormatError, match=words):
            hypernet.load(path)


def test_half_precision_file_loads_as_float32(tmp_path):
    hn = _perturb(_small())
    state = _state_of(hn)
    for dim in (8, 12):
        state[dim] = tuple(collections.OrderedDict((k, v.half()) for k, v in sd.items()) for sd in state[dim])
    path = tmp_path / "half.pt"
    torch.save(state, path)
    loaded = hypernet.load(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        hypernet.load(tmp_path / "empty.pt")
    with pytest.raises(FileFormatError, match="not found"):
        hypernet.load(tmp_path / "nope.pt")
    with pytest.raises(FileFormatError, match="not found"):
        hypernet.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileFormatError, match="folder"):
        hypernet.load(tmp_path)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(FileFormatError, match="without hypernetwork metadata"):
        hypernet.load(path)
    save_file({"8.k.bogus": torch.zeros(2)}, str(path), metadata={"format": "hypernet", "hypernet": "{}"})
    with pytest.raises(FileFormatError, match="missing"):
        hypernet.load(path)
    save_file({"weird": torch.zeros(2)}, str(path), metadata={"format": "hypernet", "hypernet": "{}"})
    with pytest.raises(FileFormatError, match="unexpected tensor name"):
        hypernet.load(path)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    hn = _perturb(_small(layer_norm=True))
    return hn.save(d / "g.pt"), hn.save(d / "g.safetensors")


@pytest.mark.parametrize("which", [0, 1])
def test_every_truncation_is_a_clean_error(tmp_path, good_files, which):
    data = open(good_files[which], "rb").read()
    suffix = ".pt" if which == 0 else ".safetensors"
    cuts = sorted(set(list(range(0, 64)) + list(range(64, len(data), max(1, len(data) // 97)))))
    for cut in cuts:
        path = tmp_path / f"t{suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(FileFormatError):
            hypernet.load(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_never_escape_as_foreign_exceptions(tmp_path, good_files, data):
    which = data.draw(st.integers(0, 1))
    original = bytearray(open(good_files[which], "rb").read())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                               min_size=1, max_size=8))
    for pos, value in flips:
        original[pos] = value
    path = tmp_path / ("f.pt" if which == 0 else "f.safetensors")
    path.write_bytes(bytes(original))
    try:
        hn = hypernet.load(path)
    except HypernetError:
        return
    # a flip that lands in tensor data still gives a well-formed network
    assert isinstance(hn, hypernet.Hypernetwork) and hn.dims == [8, 12]


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_are_refused_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("rnd") / "r.pt"
    path.write_bytes(blob)
    with pytest.raises(HypernetError):
        hypernet.load(path)


# ------------------------------------------------------------------------------------------ atomic writes
def test_saved_files_get_ordinary_permissions_and_keep_a_replaced_files(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.pt"
        _small().save(fresh)
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.safetensors"
        _small().save(kept)
        os.chmod(kept, 0o640)
        _small(name="again").save(kept)
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_interrupted_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    old = _small(name="old")
    old.save(path)
    before = path.read_bytes()

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        _perturb(_small(name="new")).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_disk_full_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    _small().save(path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(HypernetError, match="No space left on device.*unchanged"):
        _perturb(_small()).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_killed_writer_process_never_leaves_a_broken_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "x.pt"
    _small(name="old").save(path)
    script = ("import sys, hypernet\n"
              f"hn = hypernet.create(dims=[256, 512], name='new')\n"
              "print('ready', flush=True)\n"
              f"while True: hn.save({str(path)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = hypernet.load(path)  # whichever version, it is whole
    assert loaded.name in ("old", "new")


# ------------------------------------------------------------------------------------------ mapped loading
def test_loaded_weights_are_a_private_map_of_the_file(tmp_path):
    """Weights view the file's bytes (no copy), yet writing to them never reaches the file."""
    hn = _perturb(_small())
    path = tmp_path / "a.pt"
    hn.save(path)
    before = path.read_bytes()
    loaded = hypernet.load(path)
    if os.name != "nt":  # Windows reads a copy: a mapped file could not be replaced there
        from hypernet.fileformat import container
        offsets = sorted(ref.storage.offset for ref in container.read(path).refs())
        pointers = sorted(p.data_ptr() for p in loaded.parameters())
        # one map: the weights sit as far apart in memory as their bytes in the file, each in its own storage
        assert [q - pointers[0] for q in pointers] == [o - offsets[0] for o in offsets]
        assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in loaded.parameters())
    with torch.no_grad():
        for p in loaded.parameters():
            p.fill_(7.0)
    assert path.read_bytes() == before
    assert _same(hypernet.load(path), hn)


def test_a_save_over_a_loaded_file_leaves_the_loaded_weights_alone(tmp_path):
    hn = _perturb(_small())
    path = tmp_path / "a.safetensors"
    hn.save(path)
    loaded = hypernet.load(path)
    _perturb(_small(), seed=1).save(path)
    assert _same(loaded, hn)


def test_our_pt_members_are_aligned_and_unaligned_files_still_load(tmp_path):
    from hypernet.fileformat import container
    hn = _perturb(_small())
    path = tmp_path / "a.pt"
    hn.save(path)
    assert {ref.storage.offset % 64 for ref in container.read(path).refs()} == {0}
    unaligned = io.BytesIO()  # what hypernet wrote before it padded members: data at arbitrary offsets
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(unaligned, "w") as dst:
        for info in src.infolist():
            dst.writestr(zipfile.ZipInfo("x" + info.filename, date_time=(1980, 1, 1, 0, 0, 0)), src.read(info))
    odd = tmp_path / "odd.pt"
    odd.write_bytes(unaligned.getvalue())
    assert {ref.storage.offset % 4 for ref in container.read(odd).refs()} != {0}
    assert _same(hypernet.load(odd), hn)
    assert files.webui_check(path) is None


def test_copy_reader_and_mapped_reader_agree(tmp_path):
    from hypernet.fileformat import container
    hn = _perturb(_small())
    for name in ("a.pt", "a.safetensors"):
        found = container.read(hn.save(tmp_path / name))
        with container.Reader(found, copy=True) as copied, container.Reader(found, copy=False) as mapped:
            for ref in found.refs():
                assert torch.equal(copied.tensor(ref), mapped.tensor(ref))


def test_nonfinite_value_is_named_wherever_it_is_and_huge_finite_values_load(tmp_path):
    s = _state_of(_small(dims=[8, 12]))
    s[12][1]["linear.2.weight"][3, 2] = float("nan")
    torch.save(s, tmp_path / "nan.pt")
    with pytest.raises(FileFormatError, match=r"width 12 \(v\): linear.2.weight contains NaN"):
        hypernet.load(tmp_path / "nan.pt")
    s = _state_of(_small(dims=[8]))
    s[8][0]["linear.0.weight"].fill_(3e38)  # finite, but their float32 sum overflows
    torch.save(s, tmp_path / "huge.pt")
    assert float(hypernet.load(tmp_path / "huge.pt").modules_for(8)[0].linear[0].weight.max()) == pytest.approx(3e38)


def test_a_loaded_file_saves_again_with_torch_save(tmp_path):
    """Loaded weights are mapped from the file, one storage per tensor: torch.save of them writes those bytes
    alone, and the result reads back (a storage spanning the whole file would not)."""
    import io
    path = hypernet.create(dims=[64, 32], name="again", seed=3).save(tmp_path / "again.pt")
    state = hypernet.load(path).state_dict()
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_a_tensor_claiming_bytes_past_the_end_is_named_with_its_shape_its_bytes_and_the_files_size(tmp_path):
    import struct
    data = bytearray(hypernet.fileformat.files.to_safetensors_bytes(hypernet.create(dims=[16], seed=0)))
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["16.k.linear.0.weight"]["data_offsets"] = [0, 10 ** 9]
    text = json.dumps(header).encode()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data[8 + length:]))
    with pytest.raises(hypernet.FileFormatError) as info:
        hypernet.load(path)
    message = str(info.value)
    size = path.stat().st_size
    assert "'16.k.linear.0.weight' (shape [32, 16], F32)" in message and "0 to 1000000000" in message, message
    assert f"the file is {size} bytes with {size - 8 - len(text)} of data" in message and "cut.safetensors" in message
