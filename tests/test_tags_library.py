"""Prompt tags and the hypernetwork folder."""
import contextlib
import os
import threading

import pytest

import hypernet
from hypernet import FileFormatError, NotFoundError, TagError
from hypernet.library import Entry, Library
from hypernet.tags import drop_empty, format_tag, parse
from webui_stub.harness import stub_modules


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
    ("<hypernet:a:nan>", "not a number"),
    ("<hypernet:a:inf>", "not a number"),
    ("<hypernet:a:1_0>", "not a number"),        # float() reads 10
    ("<hypernet:a:\u0661>", "not a number"),     # an Arabic-Indic one: float() reads 1
    ("<hypernet:a:0x1>", "not a number"),
    ("<hypernet:a:-1e308>", "outside -10..10"),   # finite, but inf once multiplied
    ("<hypernet:a:1e309>", "outside -10..10"),
    ("<hypernet:a:10.5>", "outside -10..10"),
    ("<hypernet:a:1:cross=-11>", "outside -10..10"),
    ("<hypernet:a:1:2>", "too many values"),
    ("<hypernet:a:1:weird=2>", "unknown setting"),
    ("<hypernet:a:self=2:self=3>", "self= is given twice"),
    ("<hypernet:a:cross=2:CROSS=3>", "cross= is given twice"),
    ("<hypernet: :1>", "missing hypernetwork name"),
    ("<hypernet:>", "missing hypernetwork name"),   # the webui's pattern does not even match it
    ("<hypernet:a:self=x>", "not a number"),
])
def test_bad_tags_are_clear_errors(prompt, words):
    with pytest.raises(TagError) as info:
        parse(f"a cat {prompt} in a hat")
    assert words in str(info.value)
    assert f"{prompt}: " in str(info.value)  # names the tag as written


@pytest.mark.parametrize("text,value", [
    ("10", 10.0), ("-10", -10.0), ("+.5", 0.5), ("1.", 1.0), ("2e-1", 0.2), ("-1E1", -10.0), (" 0.7 ", 0.7),
])
def test_strengths_are_plain_decimal_numbers_from_minus_10_to_10(text, value):
    assert parse(f"<hypernet:a:{text}>")[1] == [("a", value)]
    assert parse(f"<hypernet:a:self={text}>")[1] == [("a", {"all": 1.0, "self": value})]


def test_empty_tag_is_removed_and_reported():
    prompt, errors = drop_empty("a <hypernet:> cat <hypernet:b><hypernet:>")
    assert prompt == "a  cat <hypernet:b>"
    assert [str(e) for e in errors] == ["<hypernet:>: missing hypernetwork name; write <hypernet:name> or "
                                        "<hypernet:name:0.7>"] * 2


def test_webui_takes_an_empty_tag_out_of_the_prompt_with_a_warning(tmp_path):
    with stub_modules(tmp_path) as webui:
        webui.start()
        p = webui.processing.StableDiffusionProcessingTxt2Img(prompt="a cat <hypernet:> in a hat")
        processed = webui.processing.process_images(p, lambda p: None)
    assert processed.prompts_seen == [["a cat  in a hat"]]
    assert "<hypernet:>: missing hypernetwork name" in processed.comments


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


def test_a_symlink_loop_lists_each_file_once(tmp_path):
    for rel in ("a.pt", "sub/b.pt", "sub/c.safetensors"):
        _make(tmp_path, rel)
    os.symlink("..", tmp_path / "sub" / "loop")
    lib = Library(tmp_path)
    assert [e.relpath for e in lib.entries] == ["a.pt", "sub/b.pt", "sub/c.safetensors"]
    assert [lib.resolve(name).relpath for name in ("a", "b", "c")] == ["a.pt", "sub/b.pt", "sub/c.safetensors"]


def test_linked_folders_are_followed_once_and_real_folders_keep_their_path(tmp_path):
    lib_dir, outside = tmp_path / "lib", tmp_path / "outside"
    for rel in ("lib/sub/b.pt", "outside/d.pt"):
        _make(tmp_path, rel)
    os.symlink(outside, lib_dir / "models")        # users link model folders in
    os.symlink(outside, lib_dir / "models-copy")   # a second link to the same folder
    os.symlink("sub", lib_dir / "alias")           # a link to a folder that is listed anyway
    lib = Library(lib_dir)
    assert [e.relpath for e in lib.entries] == ["models/d.pt", "sub/b.pt"]
    assert lib.resolve("d").relpath == "models/d.pt" and lib.resolve("b").relpath == "sub/b.pt"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_never_listed_or_opened(tmp_path):
    _make(tmp_path, "real.pt")
    fifo = tmp_path / "x.pt"
    os.mkfifo(fifo)
    seen = {}

    def scan():
        lib = Library(tmp_path)
        seen["relpaths"] = [e.relpath for e in lib.entries]
        lib.find_by_hash("0" * 10)  # hashes every listed file
        with pytest.raises(FileFormatError, match="not a regular file"):
            lib.load(Entry("x", str(fifo), "x.pt", 0, 0))  # an entry from a scan before the pipe replaced a file
        seen["done"] = True

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the reader stuck on the pipe
        pytest.fail("a folder with a named pipe called x.pt blocked the library")
    assert seen == {"relpaths": ["real.pt"], "done": True}


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
    _make(tmp_path, "o.pt")
    (tmp_path / "o.pt.optim").write_bytes(b"garbage that would fail to load")
    hn = Library(tmp_path).load("o")
    assert hn.optimizer_state_dict is None


def test_hashes_match_webui_shorthash(tmp_path):
    import hashlib
    path = _make(tmp_path, "h.pt")
    lib = Library(tmp_path)
    full = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert lib.sha256("h") == full and lib.shorthash("h") == full[:10] == hypernet.shorthash(path)
    assert lib.find_by_hash(full[:10]).name == "h" and lib.find_by_hash(full[:10].upper()).name == "h"
    other = "1" if full[0] == "0" else "0"
    assert lib.find_by_hash(other * 10) is None


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
