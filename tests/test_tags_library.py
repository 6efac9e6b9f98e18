"""Prompt tags and the hypernetwork folder."""
import os
import time

import pytest

import hypernet
from hypernet import NotFoundError, TagError
from hypernet.library import Library
from hypernet.tags import format_tag, parse


def test_parse_names_and_strengths_in_order():
    prompt, found = parse("water elemental <hypernet:waterElemental_10:0.7>, street <hypernet:b> <lora:x:1>")
    assert found == [("waterElemental_10", 0.7), ("b", 1.0)]
    assert prompt == "water elemental , street <lora:x:1>"
    assert "<hypernet" not in prompt


def test_parse_named_self_cross_strengths():
    _, found = parse("<hypernet:a:0.8:self=0.5> <hypernet:b:cross=0>")
    assert found == [("a", {"all": 0.8, "self": 0.5}), ("b", {"all": 1.0, "cross": 0.0})]
    for tag in ("<hypernet:a:0.8:self=0.5>", "<hypernet:a:1>"):
        assert parse(format_tag(*parse(tag)[1][0]))[1] == parse(tag)[1]


@pytest.mark.parametrize("prompt,words", [
    ("<hypernet:a:strong>", "not a number"),
    ("<hypernet:a:nan>", "finite"),
    ("<hypernet:a:1:2>", "too many values"),
    ("<hypernet:a:1:weird=2>", "unknown setting"),
    ("<hypernet: :1>", "missing hypernetwork name"),
    ("<hypernet:a:self=x>", "not a number"),
])
def test_bad_tags_are_clear_errors(prompt, words):
    with pytest.raises(TagError) as info:
        parse(prompt)
    assert words in str(info.value)
    assert "<hypernet:" in str(info.value)  # names the tag


def _make(folder, rel, seed=0, name=None):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return hypernet.create(dims=[8], seed=seed, name=name or path.stem).save(path)


def test_library_scans_recursively_and_skips_optim_and_hidden(tmp_path):
    _make(tmp_path, "a.pt")
    _make(tmp_path, "sub/deeper/B.safetensors")
    (tmp_path / "a.pt.optim").write_bytes(b"x")
    (tmp_path / ".a.pt.123.tmp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    _make(tmp_path, "None.pt", name="nothing")
    lib = Library(tmp_path)
    assert [e.relpath for e in lib.entries] == ["a.pt", "sub/deeper/B.safetensors"]
    assert lib.names() == ["a", "B"]


def test_resolve_exact_then_case_insensitive_then_ambiguous(tmp_path):
    _make(tmp_path, "Style.pt")
    _make(tmp_path, "x/dup.pt")
    _make(tmp_path, "y/dup.pt")
    _make(tmp_path, "case/Foo.pt")
    _make(tmp_path, "case/foo.pt")
    lib = Library(tmp_path)
    assert lib.resolve("Style").relpath == "Style.pt"
    assert lib.resolve("style").relpath == "Style.pt"
    assert lib.resolve("foo").relpath == "case/foo.pt"   # exact wins over case-folded
    assert lib.resolve("Foo").relpath == "case/Foo.pt"
    with pytest.raises(NotFoundError, match="ambiguous: x/dup.pt, y/dup.pt"):
        lib.resolve("dup")
    assert lib.resolve("y/dup").relpath == "y/dup.pt"
    with pytest.raises(NotFoundError, match="Did you mean Style"):
        lib.resolve("Styl")


def test_same_stem_in_two_formats_prefers_safetensors(tmp_path):
    _make(tmp_path, "s.pt")
    _make(tmp_path, "s.safetensors")
    assert Library(tmp_path).resolve("s").format == "safetensors"


def test_new_file_found_without_manual_refresh(tmp_path):
    lib = Library(tmp_path)
    _make(tmp_path, "late.pt")
    assert lib.resolve("late").name == "late"


def test_cache_is_keyed_by_path_and_mtime_not_internal_name(tmp_path):
    # the webui bug: foo-500.pt (internal name "foo") was reused for <hypernet:foo>
    _make(tmp_path, "foo.pt", seed=1, name="foo")
    _make(tmp_path, "foo-500.pt", seed=2, name="foo")
    lib = Library(tmp_path, cache_size=4)
    a = lib.load("foo-500")
    b = lib.load("foo")
    assert a is not b and a.filename.endswith("foo-500.pt") and b.filename.endswith("foo.pt")
    assert lib.load("foo") is b  # cached
    p = next(iter(b.parameters()))
    stat = os.stat(b.filename)
    hypernet.create(dims=[8], seed=3, name="foo").save(b.filename)
    os.utime(b.filename, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    c = lib.load("foo")
    assert c is not b and not bool((next(iter(c.parameters())) == p).all())


def test_cache_is_bounded_lru(tmp_path):
    for i in range(4):
        _make(tmp_path, f"n{i}.pt", seed=i)
    lib = Library(tmp_path, cache_size=2)
    for i in range(4):
        lib.load(f"n{i}")
    assert [os.path.basename(p) for p in lib.cached_paths()] == ["n2.pt", "n3.pt"]


def test_library_never_loads_optim_for_inference(tmp_path):
    path = _make(tmp_path, "o.pt")
    (tmp_path / "o.pt.optim").write_bytes(b"garbage that would fail to load")
    hn = Library(tmp_path).load("o")
    assert hn.optimizer_state_dict is None


def test_hashes_match_webui_shorthash(tmp_path):
    import hashlib
    path = _make(tmp_path, "h.pt")
    lib = Library(tmp_path)
    full = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert lib.sha256("h") == full and lib.shorthash("h") == full[:10] == hypernet.shorthash(path)
    assert lib.find_by_hash(full[:10]).name == "h"
    assert lib.find_by_hash("0000000000") is None or lib.find_by_hash("0000000000").name == "h"


def test_deleted_file_does_not_resolve_to_a_stale_entry(tmp_path):
    _make(tmp_path, "a/gone.pt")
    lib = Library(tmp_path)
    assert lib.resolve("gone").relpath == "a/gone.pt"
    os.remove(tmp_path / "a" / "gone.pt")
    _make(tmp_path, "b/gone.pt")
    assert lib.resolve("gone").relpath == "b/gone.pt"
    os.remove(tmp_path / "b" / "gone.pt")
    with pytest.raises(NotFoundError):
        lib.resolve("gone")
