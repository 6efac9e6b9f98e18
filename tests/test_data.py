"""Training data: discovery, decoding, captions, templates, sizing, buckets, latents, cache and batches."""
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from PIL import Image

from hypernet.train import data
from hypernet.config import TrainOptions
from hypernet.train.data import DatasetError, TrainingSet
from hypernet.errors import ConfigError, HypernetError, HypernetWarning

STD = 0.1
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


class FakeVAE:
    """A predictable encoder: 8x8 average pooling, plus the channel mean as a 4th channel; constant std."""

    def __init__(self, fail_above=None, nan=False):
        self.calls = 0
        self.images = 0
        self.fail_above = fail_above
        self.nan = nan

    def __call__(self, pixels):
        assert pixels.dtype == torch.float32 and pixels.dim() == 4 and pixels.shape[1] == 3
        assert pixels.min() >= -1 and pixels.max() <= 1 and not torch.is_grad_enabled()
        self.calls += 1
        if self.fail_above is not None and len(pixels) > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.images += len(pixels)
        mean = latent_of(pixels)
        if self.nan:
            mean = mean * float("nan")
        return mean, torch.full_like(mean, STD)


def latent_of(pixels):
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)


def halves(path, size=(64, 64), left=RED, right=BLUE, mode="RGB", **save):
    """An image whose left half is one colour and right half another."""
    img = Image.new(mode, size, left)
    img.paste(Image.new(mode, (size[0] - size[0] // 2, size[1]), right), (size[0] // 2, 0))
    img.save(path, **save)
    return path


def solid(path, size=(64, 64), color=GREEN, mode="RGB", **save):
    Image.new(mode, size, color).save(path, **save)
    return path


def opts(folder, **kw):
    kw.setdefault("template", "none")
    kw.setdefault("seed", 0)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return TrainOptions(data=str(folder), **kw)


def build(folder, vae=None, name="net", **kw):
    vae = vae or FakeVAE()
    set_kw = {k: kw.pop(k) for k in ("device", "generator", "encode_batch_size") if k in kw}
    return TrainingSet(opts(folder, **kw), vae, "fake-vae", name, **set_kw), vae


def expected_mean(path, width=64, height=64, mode="crop", flip=False):
    img, _ = data.load_image(path)
    pixels = data.pixels_from_image(data.fit_image(img, width, height, mode))
    return latent_of((pixels.flip(-1) if flip else pixels)[None])[0]


def one_epoch(ts, batch_size=1, seed=0):
    return list(ts.batches(batch_size, random.Random(seed), epochs=1))


# ---------------------------------------------------------------------------------------------- discovery
def test_scan_images_filters_sorts_and_recurses(tmp_path):
    for name in ("b.PNG", "a.jpg", "C.jpeg", "d.webp", "e.bmp", ".hidden.png", "notes.gif", "a.txt"):
        if name.endswith(".txt") or name.endswith(".gif"):
            (tmp_path / name).write_bytes(b"x")
        else:
            solid(tmp_path / name, (8, 8), format={"PNG": "PNG", "JPG": "JPEG", "PEG": "JPEG", "EBP": "WEBP",
                                                  "BMP": "BMP"}[name[-3:].upper()])
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "f.png", (8, 8))
    (tmp_path / ".git").mkdir()
    solid(tmp_path / ".git" / "g.png", (8, 8))

    paths, others = data.scan_images(tmp_path, recursive=False)
    assert [Path(p).name for p in paths] == ["a.jpg", "b.PNG", "C.jpeg", "d.webp", "e.bmp"]
    assert [Path(p).name for p in others] == ["notes.gif"]
    paths, _ = data.scan_images(str(tmp_path), recursive=True)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in paths] == [
        "a.jpg", "b.PNG", "C.jpeg", "d.webp", "e.bmp", "sub/f.png"]


def test_scan_images_names_a_bad_folder(tmp_path):
    with pytest.raises(DatasetError, match="missing") as info:
        data.scan_images(tmp_path / "missing")
    assert "not found" in str(info.value)
    solid(tmp_path / "x.png", (8, 8))
    with pytest.raises(DatasetError, match="x.png.*not a folder"):
        data.scan_images(tmp_path / "x.png")
    with pytest.raises(DatasetError, match="^data: no training folder"):
        data.scan_images("")


# ---------------------------------------------------------------------------------------------- decoding
def test_rgba_keeps_alpha(tmp_path):
    img = Image.new("RGBA", (8, 4), (10, 20, 30, 255))
    img.paste(Image.new("RGBA", (4, 4), (40, 50, 60, 0)), (0, 0))
    img.save(tmp_path / "a.png")
    rgb, alpha = data.load_image(tmp_path / "a.png")
    assert rgb.mode == "RGB" and rgb.size == (8, 4)
    assert alpha.dtype == np.float32 and alpha.shape == (4, 8)
    assert np.all(alpha[:, :4] == 0) and np.all(alpha[:, 4:] == 1)
    assert rgb.getpixel((6, 1)) == (10, 20, 30)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    halves(tmp_path / "phone.jpg", size=(48, 24), format="JPEG", quality=95, exif=exif.tobytes())
    rgb, alpha = data.load_image(tmp_path / "phone.jpg")
    assert alpha is None
    assert rgb.size == (24, 48)
    top, bottom = np.asarray(rgb)[:20].mean((0, 1)), np.asarray(rgb)[28:].mean((0, 1))
    assert top[0] > 200 and top[2] < 50      # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_palette_with_transparent_index(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 255, 0, 200, 0] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))
    img.save(tmp_path / "p.png", transparency=0)
    rgb, alpha = data.load_image(tmp_path / "p.png")
    assert np.all(alpha[:, :4] == 0) and np.all(alpha[:, 4:] == 1)
    assert rgb.getpixel((5, 5)) == (0, 200, 0)
    solid(tmp_path / "opaque.png", (8, 8), 1, mode="P")
    assert data.load_image(tmp_path / "opaque.png")[1] is None


def test_grey_cmyk_and_la_modes(tmp_path):
    solid(tmp_path / "l.png", (8, 8), 100, mode="L")
    rgb, alpha = data.load_image(tmp_path / "l.png")
    assert rgb.getpixel((3, 3)) == (100, 100, 100) and alpha is None
    solid(tmp_path / "cmyk.jpg", (16, 16), (255, 0, 0, 0), mode="CMYK", quality=95)
    rgb, alpha = data.load_image(tmp_path / "cmyk.jpg")
    assert np.allclose(np.asarray(rgb)[8, 8], (0, 255, 255), atol=8) and alpha is None  # pure cyan
    solid(tmp_path / "la.png", (8, 8), (50, 128), mode="LA")
    rgb, alpha = data.load_image(tmp_path / "la.png")
    assert rgb.getpixel((0, 0)) == (50, 50, 50) and np.allclose(alpha, 128 / 255)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    levels = np.array([0, 257 * 64, 257 * 128, 65535], dtype=np.uint16)
    Image.fromarray(np.tile(levels, (4, 1))).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb, alpha = data.load_image(tmp_path / "deep.png")
    assert alpha is None
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]
    wide = Image.fromarray(np.tile(levels.astype(np.int32), (4, 1)))
    assert wide.mode == "I"
    assert [data.to_rgb(wide)[0].getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [data.to_rgb(floats)[0].getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "noise.png").write_bytes(os.urandom(300))
    with pytest.raises(DatasetError, match="noise.png.*not a readable image"):
        data.load_image(tmp_path / "noise.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    whole = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match="cut.png"):
        data.load_image(tmp_path / "cut.png")
    with pytest.raises(DatasetError, match="gone.png"):
        data.load_image(tmp_path / "gone.png")


# ---------------------------------------------------------------------------------------------- captions
def test_caption_from_text_file(tmp_path):
    solid(tmp_path / "001-cat.png", (8, 8))
    (tmp_path / "001-cat.txt").write_bytes("\ufeff  a cat, sitting  \n\n on a mat \n".encode("utf-8"))
    assert data.read_caption(tmp_path / "001-cat.png") == "a cat, sitting on a mat"
    (tmp_path / "001-cat.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetError, match="001-cat.txt.*UTF-8"):
        data.read_caption(tmp_path / "001-cat.png")


def test_caption_from_file_name(tmp_path):
    assert data.caption_from_filename("0012-3- a red cat") == "a red cat"
    assert data.caption_from_filename("12345") == ""
    assert data.caption_from_filename("cat-2") == "cat-2"      # only leading numbers go
    assert data.caption_from_filename("07-red_cat (2)", r"[a-z]+", ", ") == "red, cat"
    assert data.caption_from_filename("07-red_cat", r"([a-z])[a-z]*", "") == "rc"
    assert data.read_caption(tmp_path / "3-blue_dog.png", r"[a-z]+", " ") == "blue dog"
    with pytest.raises(ConfigError, match="filename_regex"):
        data.caption_from_filename("x", "([a-z")


# ---------------------------------------------------------------------------------------------- templates
def test_shipped_templates():
    names = data.template_names()
    assert names == ["hypernetwork", "none", "style", "style_filewords", "subject", "subject_filewords"]
    assert data.load_template("none") == ["[filewords]"]
    for name in names:
        lines = data.load_template(name)
        assert lines and all(line == line.strip() and line for line in lines)
        if "filewords" in name or name in ("none", "hypernetwork"):
            assert all("[filewords]" in line for line in lines), name
        if name.startswith(("style", "subject")):
            assert all("[name]" in line for line in lines), name
    assert data.load_template("style.txt") == data.load_template("style")


def test_template_from_path_and_errors(tmp_path):
    (tmp_path / "mine.txt").write_text("\n first [filewords] \n\nsecond [name]\n", encoding="utf-8")
    assert data.load_template(tmp_path / "mine.txt") == ["first [filewords]", "second [name]"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match="empty.txt.*no prompt lines"):
        data.load_template(str(tmp_path / "empty.txt"))
    for bad in ("nosuch", str(tmp_path / "nosuch.txt"), ""):
        with pytest.raises(DatasetError, match="style_filewords, subject, subject_filewords"):
            data.load_template(bad)


def test_render_prompt_placeholders():
    rng = random.Random(0)
    assert data.render_prompt("[name] art of [filewords]", "mynet", "a b,c", rng) == "mynet art of a b,c"
    assert data.render_prompt("[filewords], [filewords]", "n", "x [name]", rng) == "x [name], x [name]"
    assert data.render_prompt("only [name]", "n", "a, b", rng, shuffle_tags=True, tag_dropout=0.5) == "only n"


def test_tag_keep_dropout_and_shuffle():
    caption = "keep1, keep2, a, b, c, d, e, f"
    rng = random.Random(1)
    outs = [data.process_tags(caption, rng, True, 0.0, 2).split(", ") for _ in range(200)]
    assert all(o[:2] == ["keep1", "keep2"] and sorted(o[2:]) == list("abcdef") for o in outs)
    assert len({tuple(o) for o in outs}) > 50
    outs = [data.process_tags(caption, rng, False, 0.5, 2).split(", ") for _ in range(400)]
    assert all(o[:2] == ["keep1", "keep2"] for o in outs)
    kept = sum(len(o) - 2 for o in outs) / (6 * len(outs))
    assert 0.4 < kept < 0.6
    assert all(o[2:] == sorted(o[2:]) for o in outs)           # dropout alone keeps the order
    a = [data.process_tags(caption, random.Random(7), True, 0.3) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert data.process_tags(" x ,, y,", random.Random(0), True, 0.0) in ("x, y", "y, x")


# ---------------------------------------------------------------------------------------------- sizing
def test_fit_image_crop_and_stretch():
    img = Image.new("RGB", (200, 100), RED)
    img.paste(Image.new("RGB", (50, 100), BLUE), (0, 0))
    img.paste(Image.new("RGB", (50, 100), GREEN), (150, 0))
    cropped = np.asarray(data.fit_image(img, 64, 64, "crop"))
    assert cropped.shape == (64, 64, 3)
    off = np.abs(cropped.astype(int) - RED).max(-1)
    assert np.all(off[:, 1:-1] <= 2) and np.all(off <= 16)  # only the centre 100x100 survives (edges filtered)
    stretched = np.asarray(data.fit_image(img, 64, 48, "stretch"))
    assert stretched.shape == (48, 64, 3)
    assert stretched[24, 2, 2] > 240 and stretched[24, 61, 1] > 240 and stretched[24, 32, 0] > 240
    tall = data.fit_image(Image.new("RGB", (30, 90)), 64, 32, "crop")
    assert tall.size == (64, 32)
    with pytest.raises(ConfigError, match="resize"):
        data.fit_image(img, 64, 64, "squash")


def test_crop_box_and_alpha_follow_the_same_geometry():
    assert data.crop_box(200, 100, 64, 64) == (50.0, 0.0, 150.0, 100.0)
    assert data.crop_box(100, 300, 64, 128) == (0.0, 50.0, 100.0, 250.0)
    alpha = np.zeros((100, 200), np.float32)
    alpha[:, 100:] = 1
    fitted = data.fit_alpha(alpha, 64, 64, "crop")
    assert fitted.shape == (64, 64) and fitted.min() >= 0 and fitted.max() <= 1
    assert np.all(fitted[:, :28] == 0) and np.all(fitted[:, 36:] == 1)
    as_image = data.fit_image(Image.fromarray((alpha * 255).astype(np.uint8)), 64, 64, "crop")
    assert np.allclose(fitted, np.asarray(as_image) / 255.0, atol=2 / 255)


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 256).map(lambda n: n * 8), st.integers(8, 256).map(lambda n: n * 8))
def test_buckets_are_multiples_of_64_within_the_area(width, height):
    buckets = data.make_buckets(width, height)
    assert buckets and len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= width * height
    assert set(buckets) == {(h, w) for w, h in buckets}          # both orientations
    if width == height and width % 64 == 0:
        assert (width, height) in buckets


def test_buckets_for_tiny_and_common_sizes():
    assert data.make_buckets(64, 64) == [(64, 64)]
    assert data.make_buckets(32, 48) == [(32, 48)]
    common = data.make_buckets(512, 512)
    assert min(min(b) for b in common) == 256 and max(max(b) for b in common) == 1024
    assert (512, 512) in common and (320, 768) in common


def test_nearest_bucket_by_aspect():
    buckets = data.make_buckets(512, 512)
    assert data.nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert data.nearest_bucket(1920, 1080, buckets)[0] > data.nearest_bucket(1920, 1080, buckets)[1]
    for w, h in ((1920, 1080), (300, 1200), (777, 555)):
        best = data.nearest_bucket(w, h, buckets)
        error = abs(np.log(best[0] / best[1]) - np.log(w / h))
        assert all(error <= abs(np.log(b[0] / b[1]) - np.log(w / h)) + 1e-12 for b in buckets)


def test_pixels_are_chw_in_minus_one_to_one():
    px = data.pixels_from_image(Image.new("RGB", (16, 8), (255, 0, 128)))
    assert px.shape == (3, 8, 16) and px.dtype == torch.float32
    assert px[0].eq(1).all() and px[1].eq(-1).all() and torch.allclose(px[2], torch.tensor(128 / 127.5 - 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------- training set
def test_unreadable_images_are_named_and_skipped(tmp_path):
    halves(tmp_path / "a.png")
    solid(tmp_path / "b.jpg", (80, 64), format="JPEG")
    (tmp_path / "bad.png").write_bytes(os.urandom(500))
    with pytest.warns(HypernetWarning) as record:
        ts, vae = build(tmp_path)
    messages = [str(w.message) for w in record]
    assert any("bad.png" in m and "not a readable image" in m for m in messages)
    assert any("skipped 1 of 3 images: bad.png" in m for m in messages)
    assert len(ts) == 2 and vae.images == 2
    assert [Path(p).name for p in ts.paths] == ["a.png", "b.jpg"]
    assert ts.skipped[0][0].endswith("bad.png")
    skipped, = ts.notes()                                 # what the Train tab's status shows: names, no paths
    assert skipped.startswith("skipped 1 of 3 images: bad.png (not a readable image (UnidentifiedImageError: ")
    assert str(tmp_path) not in skipped and "object at 0x" not in skipped


def test_captions_without_an_image_are_noted(tmp_path):
    halves(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "renamed.txt").write_text("its image was renamed")
    ts, _ = build(tmp_path)
    assert ts.notes() == ["1 caption file(s) have no image beside them: renamed.txt"]


def test_empty_or_unusable_folder_never_calls_encode(tmp_path):
    vae = FakeVAE()
    (tmp_path / "notes.gif").write_bytes(b"x")
    with pytest.raises(DatasetError) as info:
        TrainingSet(opts(tmp_path), vae, "k", "n")
    message = str(info.value)
    assert str(tmp_path) in message and "png, jpg, jpeg, webp, bmp" in message and "notes.gif" in message
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "x.png", (8, 8))
    with pytest.raises(DatasetError, match="turn on recursive"):
        TrainingSet(opts(tmp_path), vae, "k", "n")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.warns(HypernetWarning), pytest.raises(DatasetError, match="none of the 1 images"):
        TrainingSet(opts(tmp_path), vae, "k", "n")
    assert vae.calls == 0
    with pytest.raises(DatasetError, match="missing"):
        TrainingSet(opts(tmp_path / "missing"), vae, "k", "n")
    with pytest.raises(DatasetError, match="nosuch"):
        TrainingSet(opts(tmp_path / "sub", template="nosuch"), vae, "k", "n")
    with pytest.raises(ConfigError, match="filename_regex"):
        TrainingSet(opts(tmp_path / "sub", filename_regex="(("), vae, "k", "n")
    assert vae.calls == 0


def test_deterministic_latents_are_the_exact_means(tmp_path):
    halves(tmp_path / "a.png")
    solid(tmp_path / "b.png", (100, 64))
    ts, vae = build(tmp_path, latent_sampling="deterministic", encode_batch_size=8)
    assert vae.calls == 1 and vae.images == 2 and ts.encoded == 2     # one call for the one size
    batch = next(ts.batches(2, random.Random(0)))
    assert batch.latents.shape == (2, 4, 8, 8) and batch.latents.dtype == torch.float32
    for path, latent in zip(batch.paths, batch.latents):
        assert torch.allclose(latent, expected_mean(path), atol=1e-6)
    a = batch.latents[batch.paths.index(str(tmp_path / "a.png"))]
    assert torch.allclose(a[:, :, :4], torch.tensor([1.0, -1, -1, -1 / 3])[:, None, None].expand(4, 8, 4))
    assert torch.allclose(a[:, :, 4:], torch.tensor([-1.0, -1, 1, -1 / 3])[:, None, None].expand(4, 8, 4))


def test_once_latents_are_fixed_samples_from_the_generator(tmp_path):
    halves(tmp_path / "a.png")
    first, _ = build(tmp_path, generator=torch.Generator().manual_seed(3))
    again, _ = build(tmp_path, generator=torch.Generator().manual_seed(3))
    other, _ = build(tmp_path, generator=torch.Generator().manual_seed(4))
    seeded, _ = build(tmp_path, seed=3)
    uses = [next(iter(first.batches(1, random.Random(s)))).latents[0] for s in range(3)]
    assert torch.equal(uses[0], uses[1]) and torch.equal(uses[0], uses[2])
    z = (uses[0] - expected_mean(tmp_path / "a.png")) / STD
    assert 0.7 < z.std() < 1.3 and abs(z.mean()) < 0.3
    assert torch.equal(next(again.batches(1, random.Random(0))).latents[0], uses[0])
    assert torch.equal(next(seeded.batches(1, random.Random(0))).latents[0], uses[0])
    assert not torch.equal(next(other.batches(1, random.Random(0))).latents[0], uses[0])


def test_random_latents_are_resampled_each_use(tmp_path):
    halves(tmp_path / "a.png")
    ts, vae = build(tmp_path, latent_sampling="random")
    mean = expected_mean(tmp_path / "a.png")
    it = ts.batches(1, random.Random(0))
    draws = torch.stack([next(it).latents[0] for _ in range(50)])
    assert vae.images == 1
    assert not torch.equal(draws[0], draws[1])
    z = (draws - mean) / STD
    assert abs(z.mean()) < 0.05 and 0.95 < z.std() < 1.05
    again = torch.stack([b.latents[0] for _, b in zip(range(50), ts.batches(1, random.Random(0)))])
    assert torch.equal(draws, again)                               # same rng, same draws


def test_flip_encodes_the_mirror_and_picks_at_random(tmp_path):
    halves(tmp_path / "a.png")
    ts, vae = build(tmp_path, latent_sampling="deterministic", flip=True)
    assert vae.images == 2
    mean = expected_mean(tmp_path / "a.png")
    mirror = expected_mean(tmp_path / "a.png", flip=True)
    assert torch.allclose(mirror, mean.flip(-1), atol=1e-6)
    seen = set()
    for _, batch in zip(range(40), ts.batches(1, random.Random(0))):
        want = mirror if batch.flipped[0] else mean
        assert torch.allclose(batch.latents[0], want, atol=1e-6)
        seen.add(batch.flipped[0])
    assert seen == {False, True}
    unflipped, _ = build(tmp_path, latent_sampling="deterministic")
    assert not any(b.flipped[0] for _, b in zip(range(20), unflipped.batches(1, random.Random(0))))


def test_alpha_weights_at_latent_size(tmp_path):
    img = Image.new("RGBA", (64, 64), (200, 100, 50, 255))
    img.paste(Image.new("RGBA", (32, 64), (0, 0, 0, 0)), (0, 0))
    img.save(tmp_path / "a.png")
    solid(tmp_path / "b.png")
    ts, _ = build(tmp_path, use_alpha_weight=True, flip=True)
    by_path = {}
    for _, batch in zip(range(60), ts.batches(2, random.Random(0))):
        assert batch.weights.shape == (2, 1, 8, 8)
        for path, weight, flipped in zip(batch.paths, batch.weights, batch.flipped):
            by_path.setdefault((Path(path).name, flipped), weight)
    w = by_path[("a.png", False)][0]
    assert torch.all(w[:, :4] < 0.01) and torch.all(w[:, 4:] > 0.99)
    assert torch.equal(by_path[("a.png", True)], by_path[("a.png", False)].flip(-1))
    assert torch.equal(by_path[("b.png", False)], torch.ones(1, 8, 8))
    plain, _ = build(tmp_path)
    assert next(plain.batches(2, random.Random(0))).weights is None
    solid(tmp_path / "a.png")
    with pytest.warns(HypernetWarning, match="no image has transparency"):
        build(tmp_path, use_alpha_weight=True)


def test_disk_cache_skips_encode_and_gives_the_same_data(tmp_path):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    folder.mkdir()
    rgba = Image.new("RGBA", (64, 96), (200, 100, 50, 255))
    rgba.paste(Image.new("RGBA", (32, 96), (0, 0, 0, 0)), (0, 0))
    rgba.save(folder / "a.png")
    solid(folder / "b.png", (128, 64))
    kw = dict(latent_cache_dir=str(cache), flip=True, use_alpha_weight=True, resize="buckets", width=128,
              height=128)
    first, vae1 = build(folder, **kw)
    assert vae1.images == 4
    files = sorted(cache.iterdir())
    assert len(files) == 4 and all(f.suffix == ".safetensors" for f in files)
    second, vae2 = build(folder, **kw)
    assert vae2.calls == 0
    for a, b in zip(one_epoch(first, 1, seed=5), one_epoch(second, 1, seed=5)):
        assert a.paths == b.paths and a.flipped == b.flipped and a.crop_top_lefts == b.crop_top_lefts
        assert a.original_sizes == b.original_sizes and a.target_size == b.target_size
        assert torch.equal(a.latents, b.latents) and torch.equal(a.weights, b.weights)
    vae3 = FakeVAE()
    TrainingSet(opts(folder, **kw), vae3, "another-vae", "net")
    assert vae3.images == 4                                        # a different VAE misses the cache
    _, vae4 = build(folder, **{**kw, "flip": False})
    assert vae4.calls == 0                                         # unflipped entries are reused
    fresh = {**kw, "latent_cache_dir": str(tmp_path / "cache2")}
    build(folder, **{**fresh, "flip": False})
    mirrored, vae7 = build(folder, **fresh)
    assert vae7.images == 2                                        # only the mirrors were missing
    assert [torch.equal(a.latents, b.latents) for a, b in zip(one_epoch(first, 1, 9), one_epoch(mirrored, 1, 9))] \
        == [True] * 2
    files[0].write_bytes(b"garbage")
    _, vae5 = build(folder, **kw)
    assert vae5.images == 1                                        # a damaged entry is rebuilt
    _, vae6 = build(folder, **kw)
    assert vae6.calls == 0
    assert not [f for f in cache.iterdir() if not f.name.endswith(".safetensors")]


def test_unwritable_cache_is_reported_once_and_training_goes_on(tmp_path):
    solid(tmp_path / "a.png")
    solid(tmp_path / "b.png", color=RED)
    (tmp_path / "blocker").write_text("a file where the cache folder should go")
    with pytest.warns(HypernetWarning, match="latent cache not written") as record:
        ts, vae = build(tmp_path, latent_cache_dir=str(tmp_path / "blocker" / "cache"))
    assert len([w for w in record if "latent cache" in str(w.message)]) == 1
    assert len(ts) == 2 and vae.images == 2


def test_symlinked_folder_loops_are_read_once(tmp_path):
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "a.png", (8, 8))
    solid(tmp_path / "top.png", (8, 8))
    try:
        os.symlink(tmp_path, tmp_path / "sub" / "loop")
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")
    paths, _ = data.scan_images(tmp_path, recursive=True)
    assert paths == [str(tmp_path / "sub" / "a.png"), str(tmp_path / "top.png")]


def test_prompts_are_drawn_anew_for_every_use(tmp_path):
    solid(tmp_path / "1-cat.png")
    template = tmp_path.parent / f"{tmp_path.name}-template.txt"
    template.write_text("alpha [filewords]\nbeta [filewords] by [name]\ngamma [filewords]\n")
    ts, _ = build(tmp_path, template=str(template))
    assert ts.static_prompts is False
    prompts = [b.prompts[0] for _, b in zip(range(60), ts.batches(1, random.Random(0)))]
    assert set(prompts) == {"alpha cat", "beta cat by net", "gamma cat"}
    assert sorted(ts.possible_prompts()) == sorted(set(prompts))
    batch = next(ts.batches(1, random.Random(0)))
    assert batch.captions == ["cat"]


def test_static_prompts_and_tag_processing(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("one, two, three, four")
    ts, _ = build(tmp_path)
    assert ts.static_prompts is True and ts.possible_prompts() == ["one, two, three, four"]
    assert {b.prompts[0] for _, b in zip(range(10), ts.batches(1, random.Random(0)))} == {"one, two, three, four"}
    ts, _ = build(tmp_path, shuffle_tags=True, keep_tags=1)
    assert ts.static_prompts is False and ts.possible_prompts() is None
    prompts = {b.prompts[0] for _, b in zip(range(60), ts.batches(1, random.Random(0)))}
    assert len(prompts) > 3 and all(p.startswith("one, ") for p in prompts)
    ts, _ = build(tmp_path, tag_dropout=0.5)
    assert ts.static_prompts is False


def test_buckets_batch_by_size_and_cover_each_epoch(tmp_path):
    sizes = {"wide.png": (256, 128), "tall.png": (128, 256), "sq1.png": (100, 100), "sq2.png": (300, 290),
             "sq3.png": (64, 64), "pano.png": (400, 100)}
    for name, size in sizes.items():
        solid(tmp_path / name, size)
    ts, _ = build(tmp_path, resize="buckets", width=128, height=128, latent_sampling="deterministic")
    buckets = data.make_buckets(128, 128)
    want = {str(tmp_path / n): data.nearest_bucket(*s, buckets) for n, s in sizes.items()}
    assert sum(ts.bucket_counts.values()) == 6 and set(ts.bucket_counts) <= set(buckets)
    epochs = list(ts.batches(2, random.Random(1), epochs=2))
    assert len(epochs) == 2 * ts.batches_per_epoch(2)
    for epoch in (0, 1):
        batches = [b for b in epochs if b.epoch == epoch]
        assert [b.epoch_step for b in batches] == list(range(len(batches)))
        assert sorted(p for b in batches for p in b.paths) == sorted(want)      # each image once per epoch
        for b in batches:
            assert 1 <= len(b) <= 2
            for path in b.paths:
                w, h = want[path]
                assert b.latents.shape[-2:] == (h // 8, w // 8) and b.target_size == (h, w)
    assert ts.batches_per_epoch(2) == sum(-(-n // 2) for n in ts.bucket_counts.values())


def test_batch_size_is_capped_and_leftovers_form_a_batch(tmp_path):
    for i in range(3):
        solid(tmp_path / f"img{i}.png", (64 + 8 * i, 64))
    ts, _ = build(tmp_path)
    assert [len(b) for b in one_epoch(ts, 10)] == [3]
    assert sorted(len(b) for b in one_epoch(ts, 2)) == [1, 2]
    assert ts.batches_per_epoch(2) == 2 and ts.batches_per_epoch(10) == 1


def test_batches_are_deterministic_given_the_rng(tmp_path):
    for i, color in enumerate((RED, GREEN, BLUE, (9, 9, 9))):
        solid(tmp_path / f"{i}.png", color=color)
        (tmp_path / f"{i}.txt").write_text("a, b, c, d")
    ts, _ = build(tmp_path, latent_sampling="random", flip=True, shuffle_tags=True, tag_dropout=0.3,
                  template="hypernetwork")
    take = lambda seed: [b for _, b in zip(range(12), ts.batches(2, random.Random(seed)))]  # noqa: E731
    a, b, c = take(4), take(4), take(5)
    assert [x.paths for x in a] == [x.paths for x in b] and [x.prompts for x in a] == [x.prompts for x in b]
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(a, b))
    assert [x.prompts for x in a] != [x.prompts for x in c]


def test_sdxl_geometry_fields(tmp_path):
    halves(tmp_path / "wide.png", size=(128, 64))
    ts, _ = build(tmp_path, flip=True)
    for _, batch in zip(range(10), ts.batches(1, random.Random(0))):
        assert batch.original_sizes == [(64, 128)] and batch.target_size == (64, 64)
        assert batch.crop_top_lefts == [(0, 32)]
    (tmp_path / "wide.png").unlink()
    halves(tmp_path / "tall.png", size=(64, 256))
    ts, _ = build(tmp_path, width=64, height=128)
    assert next(ts.batches(1, random.Random(0))).crop_top_lefts == [(64, 0)]
    ts, _ = build(tmp_path, width=64, height=128, resize="stretch")
    assert next(ts.batches(1, random.Random(0))).crop_top_lefts == [(0, 0)]


def test_stretch_and_crop_give_different_latents(tmp_path):
    img = Image.new("RGB", (128, 64), RED)
    img.paste(Image.new("RGB", (32, 64), BLUE), (0, 0))
    img.paste(Image.new("RGB", (32, 64), GREEN), (96, 0))
    img.save(tmp_path / "a.png")
    crop, _ = build(tmp_path, latent_sampling="deterministic")
    stretch, _ = build(tmp_path, latent_sampling="deterministic", resize="stretch")
    c = next(crop.batches(1, random.Random(0))).latents[0]
    s = next(stretch.batches(1, random.Random(0))).latents[0]
    assert torch.allclose(c, expected_mean(tmp_path / "a.png", mode="crop"), atol=1e-6)
    assert torch.allclose(s, expected_mean(tmp_path / "a.png", mode="stretch"), atol=1e-6)
    assert torch.allclose(c[0], torch.tensor(1.0), atol=0.05)           # crop keeps only the red middle
    assert torch.allclose(s[2, :, :2], torch.tensor(1.0), atol=0.05)    # stretch keeps the blue left edge
    assert torch.allclose(s[1, :, -2:], torch.tensor(1.0), atol=0.05)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA"))])
@pytest.mark.parametrize("sampling", ["once", "random"])
def test_latents_can_live_on_the_given_device(tmp_path, device, sampling):
    solid(tmp_path / "a.png", color=(1, 2, 3, 0), mode="RGBA")
    solid(tmp_path / "b.png")
    ts, _ = build(tmp_path, device=device, latent_sampling=sampling, use_alpha_weight=True, flip=True)
    for batch in one_epoch(ts, 2):
        assert batch.latents.device.type == device and batch.weights.device.type == device
        assert batch.weights.sum() == 64                               # b.png opaque, a.png transparent
    default, _ = build(tmp_path, latent_sampling=sampling, use_alpha_weight=True)
    assert one_epoch(default, 2)[0].latents.device.type == "cpu"


def test_out_of_memory_halves_the_encode_batch(tmp_path):
    for i in range(4):
        solid(tmp_path / f"img{i}.png", color=(60 * i, 0, 0))
    vae = FakeVAE(fail_above=1)
    ts, _ = build(tmp_path, vae=vae, latent_sampling="deterministic", encode_batch_size=4)
    assert len(ts) == 4 and vae.images == 4
    for batch in one_epoch(ts, 1):
        assert torch.allclose(batch.latents[0], expected_mean(batch.paths[0]), atol=1e-6)


def test_nan_latents_are_refused_with_advice(tmp_path):
    solid(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="a.png.*float32"):
        build(tmp_path, vae=FakeVAE(nan=True))
    with pytest.raises(HypernetError, match="must return"):
        TrainingSet(opts(tmp_path), lambda px: (px[0], px[0]), "k", "n")


def test_progress_and_captions(tmp_path):
    solid(tmp_path / "01-red_car.png")
    solid(tmp_path / "02-blue_bike.png")
    (tmp_path / "02-blue_bike.txt").write_text("a bike")
    calls = []
    ts = TrainingSet(opts(tmp_path, filename_regex=r"[a-z]+", filename_join="+"), FakeVAE(), "k", "n",
                     progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert ts.captions == ["red+car", "a bike"]
    solid(tmp_path / "0003.png")
    with pytest.warns(HypernetWarning, match="1 image.*empty caption.*0003.png"):
        build(tmp_path)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_templates_are_package_data():
    import tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "templates/*.txt" in pyproject["tool"]["setuptools"]["package-data"]["hypernet"]
