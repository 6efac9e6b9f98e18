"""Crafted weights files, built from raw pickle instructions and raw zip / safetensors bytes: what an attacker writes
and torch.save never does. Each builder returns bytes; the tests write them where they need them."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import torch

PROTO = b"\x80\x02"


def put(index: int) -> bytes:
    """The memo store of the top of the stack at `index`."""
    return b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    """The memo fetch of `index` onto the stack."""
    return b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)


def text(value: str) -> bytes:
    """A BINUNICODE string."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def zip_pt(pkl: bytes, members: dict = None) -> bytes:
    """A torch zip file (archive/data.pkl, version, the given data members), stored, as torch.save lays it out."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
        for name, data in (members or {}).items():
            z.writestr(f"archive/data/{name}", data)
    return out.getvalue()


def legacy_pt(obj_pickle: bytes, keys_pickle: bytes = PROTO + b"].") -> bytes:
    """torch's pre-1.6 (non-zip) layout around one object pickle: magic, protocol, system info, the object, the
    storage keys."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    head = magic + pickle.dumps(1001, protocol=2) + pickle.dumps({"little_endian": True}, protocol=2)
    return head + obj_pickle + keys_pickle


def self_holding_list() -> bytes:
    """A list that holds itself."""
    return PROTO + b"]" + put(0) + get(0) + b"a."


def shared_dag(levels: int) -> bytes:
    """`levels` lists, each holding the next one twice: 2**levels paths to the last, `levels` objects in all."""
    ops = [PROTO, b"]", put(0)]
    for i in range(1, levels + 1):
        ops += [b"(", get(i - 1), get(i - 1), b"l", put(i)]
    return b"".join(ops) + b"."


def memo_flood(size: int) -> bytes:
    """About `size` bytes of alternating memo stores and fetches (each fetch another stack entry)."""
    unit = b"\x94" + get(0)
    return b"\x80\x04]" + b"\x94" + unit * (size // len(unit)) + b"."


def dup_flood(size: int) -> bytes:
    """A list of about `size` entries, each a DUP of the same list."""
    return PROTO + b"](]" + b"2" * size + b"e."


def deep_lists(depth: int) -> bytes:
    """`depth` lists, each inside the next."""
    return PROTO + b"]" * depth + b"a" * (depth - 1) + b"."


def with_marker(obj: dict, marker: str, replacement: bytes) -> bytes:
    """torch.save(obj) as zip bytes with the pickled string `marker` replaced by raw instructions."""
    raw = io.BytesIO()
    torch.save(obj, raw)
    out = io.BytesIO()
    needle = text(marker)
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                assert needle in data
                data = data.replace(needle, replacement)
            zout.writestr(zipfile.ZipInfo(info.filename), data)
    return out.getvalue()


def huge_int(digits: int) -> bytes:
    """A LONG4 instruction holding an integer of about `digits` decimal digits."""
    raw = (10 ** digits).to_bytes((digits * 10 // 3) // 8 + 2, "little", signed=True)
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def safetensors(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file from a header dict (written as given, lies included) and data bytes."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def many_tensors_header(count: int) -> bytes:
    """A safetensors file whose header lists `count` one-element tensors (written as text, without a dict)."""
    entry = '"t%d":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}'
    raw = ("{" + ",".join(entry % (i, 4 * i, 4 * i + 4) for i in range(count)) + "}").encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * count)


def many_zip_entries(count: int) -> bytes:
    """A zip whose central directory lists `count` empty stored members (directory written by hand, quickly)."""
    local, central = [], []
    offset = 0
    for i in range(count):
        name = b"archive/data/%d" % i
        head = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0,
                                   0, 0, offset) + name)
        local.append(head)
        offset += len(head)
    directory = b"".join(central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), len(directory),
                      offset, 0)
    return b"".join(local) + directory + end


def legacy_storages(count: int) -> bytes:
    """A legacy file whose object is a list of `count` distinct one-element float storages."""
    ops = [PROTO, b"]", text("storage"), put(1), b"0", b"ctorch\nFloatStorage\n", put(2), b"0"]
    for i in range(count):  # MARK, ("storage", FloatStorage, key, "cpu", 1) as a tuple, BINPERSID, APPEND
        ops += [b"(", get(1), get(2), text(str(i)), text("cpu"), b"K\x01", b"t", b"Q", b"a"]
    return legacy_pt(b"".join(ops) + b".")


def many_views(count: int) -> bytes:
    """A zip file whose object is a list of `count` views of one 4-float storage, each built from memoized
    arguments (4 instructions a view)."""
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x04tQ"
    ops = [PROTO, b"]", b"ctorch._utils\n_rebuild_tensor_v2\n", put(1), b"(", storage, b"K\x00K\x04\x85K\x01\x85\x89)t",
           put(2), b"0", b"0"]
    ops += [get(1) + get(2) + b"Ra"] * count
    return zip_pt(b"".join(ops) + b".", {"0": b"\0" * 16})
