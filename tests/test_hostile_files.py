"""Crafted files: bounded memory, no hangs, exact reasons; each case built here from scratch."""
import collections
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import hypernet
from hypernet.fileformat import files
from hypernet.errors import FileFormatError, HypernetError, UnsafeFileError
from hypernet.ui import metadata

ROOT = Path(__file__).resolve().parents[1]


def _layout(dim, k, v, **meta):
    """The webui's .pt dict for one width of a [1, 2, 1] linear hypernetwork."""
    return {dim: (k, v), "name": "crafted", "layer_structure": [1.0, 2.0, 1.0], "activation_func": "linear",
            "activate_output": False, **meta}


def _expanded_state(dim):
    """A [1, 2, 1] module whose weights are one stored zero, expanded to full size (stride 0)."""
    zero = torch.zeros(1)
    return collections.OrderedDict([
        ("linear.0.weight", zero.expand(2 * dim, dim)), ("linear.0.bias", zero.expand(2 * dim)),
        ("linear.1.weight", zero.expand(dim, 2 * dim)), ("linear.1.bias", zero.expand(dim))])


def _every_reader(path):
    """Each way a file gets read: full load, the cards' header read, the check command."""
    yield "load", lambda: hypernet.load(path)
    yield "inspect", lambda: files.inspect(path)
    yield "card", lambda: metadata.read(str(path))


def _refused(path, words, kind=FileFormatError):
    for name, read in _every_reader(path):
        with pytest.raises(kind) as info:
            read()
        assert str(path) in str(info.value) and words in str(info.value), (name, str(info.value))
    return info.value


# ---------------------------------------------------------------------------------------------- memory
def test_expanded_tensors_are_refused_before_they_are_materialised(tmp_path):
    path = tmp_path / "expanded.pt"
    torch.save(_layout(4000, _expanded_state(4000), _expanded_state(4000)), path)
    assert path.stat().st_size < 10_000
    _refused(path, "claim")


def test_a_huge_expanded_file_costs_no_memory(tmp_path):
    """D=30000 asked for 7.2 GB per tensor before; now the whole process stays small."""
    path = tmp_path / "expanded.pt"
    torch.save(_layout(30000, _expanded_state(30000), _expanded_state(30000)), path)
    code = ("import resource, sys, hypernet\n"
            "try:\n    hypernet.load(sys.argv[1])\nexcept hypernet.HypernetError as e:\n    print('refused', e)\n"
            "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT).stdout
    assert "refused" in out and "claim" in out
    rss_mb = int(out.split("maxrss_kb")[1]) / 1024
    baseline = subprocess.run([sys.executable, "-c", code.replace("hypernet.load(sys.argv[1])", "pass"), "x"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    assert rss_mb < int(baseline.split("maxrss_kb")[1]) / 1024 + 50


def _rezip(src: bytes, compress=None, pad_member=None) -> bytes:
    """A copy of a torch zip with its data members deflated, or one of them padded with extra bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if pad_member and info.filename.endswith(pad_member):
                data += b"\x00" * (1 << 20)
            method = compress if compress and "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(zipfile.ZipInfo(info.filename), data, compress_type=method)
    return out.getvalue()


def test_compressed_members_are_refused_unread(tmp_path, monkeypatch):
    good = files.to_pt_bytes(hypernet.create(dims=[16], seed=0))
    path = tmp_path / "bomb.pt"
    path.write_bytes(_rezip(good, compress=zipfile.ZIP_DEFLATED))
    reads = []
    real = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    _refused(path, "is compressed")
    assert reads == []                                     # nothing was inflated


def test_a_storage_member_larger_than_its_tensor_is_refused(tmp_path):
    good = files.to_pt_bytes(hypernet.create(dims=[16], seed=0))
    path = tmp_path / "padded.pt"
    path.write_bytes(_rezip(good, pad_member="data/0"))
    _refused(path, "should hold")


def test_overlapping_zip_members_are_refused(tmp_path):
    good = bytearray(files.to_pt_bytes(hypernet.create(dims=[16], seed=0)))
    with zipfile.ZipFile(io.BytesIO(bytes(good))) as z:
        infos = {i.filename.split("/", 1)[1]: i for i in z.infolist()}
    first, second = infos["data/0"], infos["data/2"]      # same size: two weights of one shape
    assert first.file_size == second.file_size
    # Point the central record of data/2 at data/0's local header: two names, one run of bytes.
    pos = 0
    while True:
        pos = good.index(b"PK\x01\x02", pos)
        name_len = struct.unpack_from("<H", good, pos + 28)[0]
        name = bytes(good[pos + 46:pos + 46 + name_len]).decode()
        if name.endswith("/data/2"):
            struct.pack_into("<L", good, pos + 42, first.header_offset)
            break
        pos += 4
    path = tmp_path / "overlap.pt"
    path.write_bytes(bytes(good))
    with pytest.raises(FileFormatError, match="share bytes|malformed|local header"):
        hypernet.load(path)


def test_metadata_cannot_claim_more_parameters_than_the_file_holds(tmp_path):
    hn = hypernet.create(dims=[16], seed=0)
    state = torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)
    state["layer_structure"] = [1.0, 3000.0, 1.0]          # shapes then disagree, and the count is absurd
    path = tmp_path / "claims.pt"
    torch.save(state, path)
    _refused(path, "")


def test_safetensors_header_lies_are_refused(tmp_path):
    hn = hypernet.create(dims=[16], seed=0)
    data = bytearray(files.to_safetensors_bytes(hn))
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    cases = {
        "claims data bytes 0 to 1000000000": lambda h: h["16.k.linear.0.weight"].__setitem__("data_offsets",
                                                                                               [0, 10 ** 9]),
        "needs": lambda h: h["16.k.linear.0.weight"].__setitem__("shape", [32, 17]),
        "share bytes": lambda h: h["16.v.linear.0.weight"].__setitem__(
            "data_offsets", h["16.k.linear.0.weight"]["data_offsets"]),
    }
    for words, change in cases.items():
        crafted = json.loads(json.dumps(header))
        change(crafted)
        text = json.dumps(crafted).encode()
        path = tmp_path / "lie.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data[8 + length:]))
        with pytest.raises(FileFormatError) as info:
            hypernet.load(path)
        assert words.split()[-1] in str(info.value), str(info.value)


def test_a_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    _refused(path, "header claims")


# ---------------------------------------------------------------------------------------------- nesting, pipes, names
def test_deeply_nested_json_metadata_is_a_clear_error(tmp_path):
    hn = hypernet.create(dims=[16], seed=0)
    from safetensors.torch import save
    tensors = {f"16.{w}.{k}": v for w, m in zip("kv", hn.modules_for(16)) for k, v in m.state_dict().items()}
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(save(tensors, metadata={"format": "hypernet", "hypernet": deep}))
    _refused(path, "nested too deeply")


def test_deeply_nested_pickle_values_are_not_a_crash(tmp_path):
    hn = hypernet.create(dims=[16], seed=0)
    state = torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)
    state["layer_structure"] = "DEEPMARKER"
    raw = io.BytesIO()
    torch.save(state, raw)
    depth = 100_000
    deep = b"]" * depth + b"a" * (depth - 1)              # 100,000 lists, each inside the next
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x0a\x00\x00\x00DEEPMARKER", deep)
            zout.writestr(zipfile.ZipInfo(info.filename), data)
    path = tmp_path / "deep.pt"
    path.write_bytes(out.getvalue())
    _refused(path, "nested too deeply")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_never_hangs_any_reader(tmp_path):
    pipe = tmp_path / "x.pt"
    os.mkfifo(pipe)
    results = []

    def read_all():
        for name, read in list(_every_reader(pipe)) + [("check", lambda: hypernet.webui_check(pipe))]:
            try:
                results.append((name, read()))
            except HypernetError as exc:
                results.append((name, str(exc)))

    worker = threading.Thread(target=read_all, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # unblock the reader so the test run can go on, then fail
        with open(pipe, "wb"):
            pass
        pytest.fail("a reader blocked on a named pipe")
    assert [n for n, _ in results] == ["load", "inspect", "card", "check"]
    assert all("not a regular file" in str(text) for _, text in results), results


def test_pt_and_safetensors_named_the_wrong_way_round(tmp_path):
    hn = hypernet.create(dims=[16], seed=0)
    as_pt = tmp_path / "really_safetensors.pt"
    as_pt.write_bytes(files.to_safetensors_bytes(hn))
    _refused(as_pt, "rename it to really_safetensors.safetensors")
    as_st = tmp_path / "really_pt.safetensors"
    as_st.write_bytes(files.to_pt_bytes(hn))
    _refused(as_st, "rename it to really_pt.pt")


def test_an_unreadable_file_says_so(tmp_path, monkeypatch):
    path = tmp_path / "locked.safetensors"
    hypernet.create(dims=[16], seed=0).save(path)
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if str(p) == str(path) else real_open(p, *a, **k))
    _refused(path, "permission denied")


def test_neither_format_is_named_as_such(tmp_path):
    path = tmp_path / "page.pt"
    path.write_bytes(b"<!DOCTYPE html><html>not found</html>")
    _refused(path, "neither a PyTorch")


# ---------------------------------------------------------------------------------------------- pickle tricks
def _pickle_with(ops: bytes) -> bytes:
    """A protocol-2 pickle made of raw opcodes (to reach what pickle.dumps never writes)."""
    return b"\x80\x02" + ops + b"."


EVAL = b"cbuiltins\neval\n"


@pytest.mark.parametrize("payload,words", [
    (_pickle_with(EVAL + b"X\x0a\x00\x00\x00print(1)+1\x85R"), "builtins.eval"),                 # GLOBAL + REDUCE
    (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.",
     "builtins.eval"),                                                                               # STACK_GLOBAL
    (b"(X\x02\x00\x00\x00hiios\nsystem\n.", "INST"),                                        # INST
    (_pickle_with(b"}X\x01\x00\x00\x00a}b"), "BUILD"),                                         # BUILD on a dict
    (_pickle_with(b"X\x03\x00\x00\x00abc}b"), "BUILD"),                                        # BUILD on a str
    (_pickle_with(b"\x82\x01"), "EXT1"),                                                          # copyreg extension
])
def test_every_code_path_in_a_pickle_is_named_malicious(tmp_path, payload, words):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    path = tmp_path / "evil.pt"
    path.write_bytes(out.getvalue())
    error = _refused(path, "may be malicious", UnsafeFileError)
    assert words in str(error)


def _webui_module():
    """A module laid out as the webui's HypernetworkModule (linear.0, linear.1) for a [1, 2, 1] linear network."""
    module = torch.nn.Module()
    module.linear = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16))
    return module


def test_state_dict_metadata_build_is_still_read(tmp_path):
    """module.state_dict() pickles its _metadata with BUILD; webui-made files are full of it."""
    module = _webui_module()
    assert hasattr(module.state_dict(), "_metadata")
    path = tmp_path / "with_metadata.pt"
    torch.save(_layout(16, module.state_dict(), module.state_dict()), path)
    hn = hypernet.load(path)
    assert torch.equal(hn.modules_for(16)[0].linear[0].weight, module.linear[0].weight)


def test_one_tensor_listed_twice_becomes_two_parameters(tmp_path):
    sd = _webui_module().state_dict()
    path = tmp_path / "shared.pt"
    torch.save(_layout(16, sd, sd), path)                  # pickle memo: the same tensors for k and v
    hn = hypernet.load(path)
    k, v = hn.modules_for(16)
    assert torch.equal(k.linear[0].weight, v.linear[0].weight)
    assert k.linear[0].weight.data_ptr() != v.linear[0].weight.data_ptr()


def test_the_reader_never_calls_torch_load(tmp_path, monkeypatch, fixtures_dir):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    fixtures = sorted(fixtures_dir.glob("*.pt"))
    assert len(fixtures) >= 3  # the webui-made reference files
    for path in fixtures:
        assert hypernet.load(path).dims
        assert metadata.read(str(path))["dims"]


def test_legacy_format_and_half_precision_round_trip(tmp_path):
    hn = hypernet.create(dims=[16, 24], seed=3)
    state = torch.load(io.BytesIO(files.to_pt_bytes(hn)), weights_only=True)
    half = {k: (tuple(collections.OrderedDict((n, t.half()) for n, t in sd.items()) for sd in v)
                if isinstance(k, int) else v) for k, v in state.items()}
    path = tmp_path / "legacy_half.pt"
    torch.save(half, path, _use_new_zipfile_serialization=False)
    loaded = hypernet.load(path)
    for dim in hn.dims:
        for a, b in zip(hn.modules_for(dim), loaded.modules_for(dim)):
            for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
                assert y.dtype == torch.float32 and torch.equal(x.half().float(), y), name
    assert metadata.read(str(path))["dims"] == [16, 24]
