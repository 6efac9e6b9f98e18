"""Training data: finding images, captions, prompt templates, resizing and buckets, and encoded latents.

Where this differs from the webui's dataset (modules/textual_inversion/dataset.py), on purpose:
- Sub-folders can be read (`recursive`), hidden files are skipped, and the order is sorted, so runs repeat.
- Phone photos are turned upright by their EXIF orientation; 16-bit images are scaled to 8 bits rather than
  clipped; palette images with a transparent colour keep their transparency.
- Unreadable images are reported by name and skipped, never silently.
- `crop` keeps the aspect ratio (scale to cover, then centre crop); `stretch` is the webui's plain resize;
  `buckets` groups images into NovelAI-style aspect buckets and crops each image to its bucket.
- Flips really happen: the mirrored image is encoded too, and each use picks one of the two at random.
- A template line is drawn anew every time an image is used, not fixed once per image for the whole run.
- Alpha weights are the plain alpha channel in [0, 1] at latent size (the webui rescales them to mean 1); the
  trainer should take a weighted mean of the loss, sum(w * loss) / sum(w).
- The shipped `none` template is the single line "[filewords]" (the webui's is "picture"): for a hypernetwork the
  caption itself should be the prompt, and "picture" would train every image against the same word.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..bounds import MAX_CAPTION_BYTES, MAX_DECODED_BYTES, MAX_IMAGE_FILE_BYTES, MAX_TEXT_BYTES, read_text
from ..config import TrainOptions
from ..errors import ConfigError, HypernetError, HypernetWarning
from ..fileformat.files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS", "TEMPLATE_DIR", "Batch", "DatasetError", "TrainingSet", "caption_from_filename",
    "crop_box", "decode_image", "fit_image", "load_image", "load_template", "make_buckets", "nearest_bucket",
    "pixels_from_image", "process_tags", "read_caption", "render_prompt", "scan_images", "template_names",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
CACHE_FORMAT = "hypernet-latents"
CACHE_VERSION = "1"  # bump when decoding, resizing or bucketing changes what a cached latent holds
_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")  # the webui's re_numbers_at_start
_PLACEHOLDER = re.compile(r"\[(name|filewords)\]")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
Encoder = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class DatasetError(HypernetError):
    """A training folder, image, caption or template cannot be used; the message names it."""

    def __init__(self, where, message: str):
        self.path = str(where)
        self.reason = message
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------- finding images
def scan_images(folder, recursive: bool = False) -> Tuple[List[str], List[str]]:
    """Image files under `folder` in a stable order, and the other visible files passed over (captions excepted)."""
    images, others, _ = scan_folder(folder, recursive)
    return images, others


def scan_folder(folder, recursive: bool = False) -> Tuple[List[str], List[str], List[str]]:
    """(images, other visible files, caption .txt files) under `folder`, each in a stable order, in one walk."""
    root = _check_folder(folder)
    images: List[Path] = []
    others: List[Path] = []
    captions: List[Path] = []
    for path in _walk(root, recursive):
        suffix = path.suffix.lower()
        (images if suffix in IMAGE_EXTENSIONS else captions if suffix == ".txt" else others).append(path)
    return _sorted_paths(images, root), _sorted_paths(others, root), _sorted_paths(captions, root)


def _check_folder(folder) -> Path:
    """The training folder as a Path, or a DatasetError saying what is wrong with it."""
    if folder is None or not str(folder).strip():
        raise DatasetError("data", "no training folder given; set it to the folder that holds your images")
    root = Path(str(folder)).expanduser()
    if not root.exists():
        raise DatasetError(root, f"folder not found (relative paths start at {os.getcwd()}); check the path")
    if not root.is_dir():
        raise DatasetError(root, "is a file, not a folder; give the folder that holds the images")
    return root


def _walk(root: Path, recursive: bool) -> Iterator[Path]:
    """Visible files in `root` (and its visible sub-folders when recursive), each real folder visited once."""
    seen = {os.path.realpath(root)}
    try:
        top = list(os.scandir(root))
    except OSError as exc:
        raise DatasetError(root, f"cannot list the folder ({exc.strerror or exc}); check its permissions") from None
    stack = [top]
    while stack:
        for entry in stack.pop():
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                yield Path(entry.path)
            elif recursive and entry.is_dir():
                real = os.path.realpath(entry.path)
                if real not in seen:  # symlinked folders may loop back
                    seen.add(real)
                    try:
                        stack.append(list(os.scandir(entry.path)))
                    except OSError:
                        continue


def _sorted_paths(paths: List[Path], root: Path) -> List[str]:
    """Paths sorted by their relative path, case-insensitively, so every platform trains in the same order."""
    key = lambda p: (p.relative_to(root).as_posix().casefold(), p.relative_to(root).as_posix())  # noqa: E731
    return [str(p) for p in sorted(paths, key=key)]


# ---------------------------------------------------------------------------------------------- reading images
def load_image(path) -> Tuple[Image.Image, Optional[np.ndarray]]:
    """An image file as an upright RGB image, plus its alpha (float32 H x W in [0, 1]) when it has one."""
    return decode_image(_read_bytes(path), path)


def _read_bytes(path, cap: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """A file's bytes, or a DatasetError naming it (also when it is larger than `cap`, checked before reading)."""
    try:
        size = os.path.getsize(path)
        if size > cap:
            raise DatasetError(path, f"is {size:,} bytes, more than the {cap:,} an image file may have; it was not "
                                     "read (resize it, or remove it from the folder)")
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the file ({exc.strerror or exc}); check that it exists and is "
                                 "readable") from None


def decode_image(data: bytes, name) -> Tuple[Image.Image, Optional[np.ndarray]]:
    """Encoded image bytes as (upright RGB image, alpha or None); `name` is only used in error messages."""
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: our own, lower cap below refuses those images
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            _check_decoded_size(img, name)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img) or img)  # None only when asked to work in place
    except DatasetError:
        raise
    # Decoders of untrusted files fail in many ways (OSError, SyntaxError, struct.error, bomb checks, ...).
    except Exception as exc:  # noqa: BLE001
        detail = _OBJECT_REPR.sub("", str(exc)).strip()  # Pillow names the BytesIO object, not the file
        raise DatasetError(name, f"not a readable image ({type(exc).__name__}: {detail}); re-save it as PNG or JPEG, "
                                 "or remove it from the folder") from None


def decoded_bytes(size: Tuple[int, int], mode: str, transparent: bool = False) -> int:
    """The memory an image of this size and Pillow mode takes at once while decoded and converted by to_rgb: its
    own pixels twice (an EXIF rotation copies them), then what the conversion makes (RGB; with alpha also RGBA and
    a float32 alpha; wide modes a float32 working copy and its 8-bit result)."""
    own = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}.get(mode, 4)
    if mode in _SIXTEEN_BIT or mode == "F":
        made = 4 + 1 + 3
    elif mode in _WITH_ALPHA or transparent:
        made = 4 + 3 + 4 + 1
    else:
        made = 3
    return size[0] * size[1] * (2 * own + made)


def _check_decoded_size(img: Image.Image, name) -> None:
    """DatasetError (the image is skipped with a warning) when decoding it would take more than MAX_DECODED_BYTES,
    checked from the header before a pixel is decoded; Pillow's own pixel limit lets a 16-bit image four times
    larger through."""
    need = decoded_bytes(img.size, img.mode, "transparency" in img.info)
    if need > MAX_DECODED_BYTES:
        raise DatasetError(name, f"is {img.size[0]}x{img.size[1]} ({img.mode}); decoding it would take about "
                                 f"{need / 2**20:,.0f} MiB, over the {MAX_DECODED_BYTES / 2**20:,.0f} MiB limit for one "
                                 "image; resize it, or remove it from the folder")


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def to_rgb(img: Image.Image) -> Tuple[Image.Image, Optional[np.ndarray]]:
    """Any Pillow mode as 8-bit RGB, with the alpha channel split off as float32 in [0, 1] when there is one."""
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        return Image.fromarray(_wide_to_uint8(np.asarray(img), img.mode)).convert("RGB"), None
    if img.mode in _WITH_ALPHA or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return img.convert("RGB"), None


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (or float) grey levels scaled into 0..255; Pillow's own convert would clip them at 255."""
    values = np.nan_to_num(values.astype(np.float32), copy=False)  # one working copy, changed in place
    # Float images come either normalised to [0, 1] or in the 16-bit range; nothing in the file says which.
    scale = 255.0 if mode == "F" and values.max(initial=0.0) <= 1.0 else 1.0 / 257.0
    values *= scale
    return np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- captions
def read_caption(image_path, filename_regex: str = "", filename_join: str = " ") -> str:
    """An image's caption: its <stem>.txt when there is one, else words taken from its file name."""
    text_file = Path(image_path).with_suffix(".txt")
    if text_file.is_file():
        return read_caption_file(text_file)
    return caption_from_filename(Path(image_path).stem, filename_regex, filename_join)


def read_caption_file(path) -> str:
    """A caption file's text, its lines stripped and joined by spaces (the webui keeps the newlines, CLIP reads
    them as spaces); only its first MAX_CAPTION_BYTES are read, with a warning naming it when it holds more."""
    text = read_text_file(path, MAX_CAPTION_BYTES, "caption")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def read_text_file(path, cap: int, what: str) -> str:
    """A text input's first `cap` bytes (a caption, a template, a prompts file), with a HypernetWarning naming the
    file when it holds more, or a DatasetError naming it when it cannot be read as UTF-8 text."""
    try:
        text, cut = read_text(path, cap)
    except UnicodeDecodeError:
        raise DatasetError(path, f"is not UTF-8 text; save the {what} as UTF-8") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read the {what} ({exc.strerror or exc}); check that it exists and is "
                                 "readable") from None
    if cut:
        warnings.warn(f"{path}: the {what} is longer than {cap:,} bytes; only its first {cap:,} bytes are used",
                      HypernetWarning, stacklevel=3)
    return text


def caption_from_filename(stem: str, filename_regex: str = "", filename_join: str = " ") -> str:
    """The webui's file-name caption: leading digits and dashes removed, then the regex's matches joined."""
    text = _LEADING_NUMBERS.sub("", stem)
    if filename_regex:
        matches = compile_filename_regex(filename_regex).findall(text)
        text = filename_join.join("".join(m) if isinstance(m, tuple) else m for m in matches)
    return text


@functools.lru_cache(maxsize=16)
def compile_filename_regex(pattern: str) -> "re.Pattern":
    """The compiled filename_regex, or a ConfigError naming the field."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError("filename_regex", f"{pattern!r} is not a valid regular expression ({exc}); for words "
                                            r"use \w+ or [a-zA-Z]+") from None


# ---------------------------------------------------------------------------------------------- templates
def template_names() -> List[str]:
    """Names of the templates shipped in hypernet/templates."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def load_template(name_or_path) -> List[str]:
    """The non-empty lines of a shipped template (by name) or of a .txt file of prompts."""
    path = _template_path(str(name_or_path or "").strip())
    text = read_text_file(path, MAX_TEXT_BYTES, "template")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetError(path, "has no prompt lines; write one prompt per line, with [filewords] for the caption "
                                 f"and [name] for the hypernetwork name, or use one of: {', '.join(template_names())}")
    return lines


def _template_path(text: str) -> Path:
    """The file a template name or path refers to; shipped names win over files of the same name."""
    stem = text[:-4] if text.lower().endswith(".txt") else text
    shipped = TEMPLATE_DIR / f"{stem}.txt"
    if stem and "/" not in text and os.sep not in text and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if not text or not path.is_file():
        raise DatasetError(text or "template", f"no such template; use one of: {', '.join(template_names())}, or "
                                               "the path of a .txt file with one prompt per line")
    return path


def render_prompt(line: str, name: str, caption: str, rng: random.Random, shuffle_tags: bool = False,
                  tag_dropout: float = 0.0, keep_tags: int = 0) -> str:
    """One template line with [name] and [filewords] filled in, the caption's tags shuffled or dropped by `rng`."""
    words = process_tags(caption, rng, shuffle_tags, tag_dropout, keep_tags) if "[filewords]" in line else caption
    # One pass, so a caption that contains "[name]" is not substituted again.
    return _PLACEHOLDER.sub(lambda m: name if m.group(1) == "name" else words, line)


def process_tags(caption: str, rng: random.Random, shuffle_tags: bool = False, tag_dropout: float = 0.0,
                 keep_tags: int = 0) -> str:
    """Comma-separated tags with the first `keep_tags` fixed and the others dropped and/or shuffled."""
    if not shuffle_tags and tag_dropout <= 0:
        return caption  # untouched, spacing and all
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    fixed, rest = tags[:keep_tags], tags[keep_tags:]
    if tag_dropout > 0:
        rest = [t for t in rest if rng.random() >= tag_dropout]
    if shuffle_tags:
        rng.shuffle(rest)
    return ", ".join(fixed + rest)


# ---------------------------------------------------------------------------------------------- sizing
def crop_box(width: int, height: int, target_width: int, target_height: int) -> Tuple[float, float, float, float]:
    """The centred (left, top, right, bottom) region of a width x height image with the target's aspect ratio."""
    if width * target_height > height * target_width:  # wider than the target
        kept = height * target_width / target_height
        left = (width - kept) / 2
        return left, 0.0, left + kept, float(height)
    kept = width * target_height / target_width
    top = (height - kept) / 2
    return 0.0, top, float(width), top + kept


def fit_image(img: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """`img` at exactly width x height: scaled to cover and centre-cropped ("crop", "buckets"), or "stretch"ed."""
    box = _source_box(img.size, (width, height), mode)
    if img.size == (width, height):
        return img.copy()
    # Resizing straight from the crop box resamples once instead of resize-then-crop.
    return img.resize((width, height), _resample(box, width, height), box=box)


def _source_box(size: Tuple[int, int], target: Tuple[int, int], mode: str) -> Tuple[float, float, float, float]:
    """The part of an image of `size` that fills `target` in the given resize mode."""
    if mode == "stretch":
        return 0.0, 0.0, float(size[0]), float(size[1])
    if mode in ("crop", "buckets"):
        return crop_box(size[0], size[1], target[0], target[1])
    raise ConfigError("resize", f"unknown mode {mode!r}; accepted: crop, stretch, buckets")


def _resample(box, width: int, height: int) -> int:
    """LANCZOS when shrinking (sharp), BICUBIC when enlarging (LANCZOS rings there)."""
    shrinking = (box[2] - box[0]) * (box[3] - box[1]) > width * height
    return Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC


def fit_alpha(alpha: np.ndarray, width: int, height: int, mode: str = "crop") -> np.ndarray:
    """An alpha map put through the same geometry as its image by fit_image."""
    fitted = fit_image(Image.fromarray(alpha.astype(np.float32), mode="F"), width, height, mode)
    return np.clip(np.asarray(fitted, dtype=np.float32), 0.0, 1.0)  # LANCZOS overshoots at hard edges


def make_buckets(max_width: int, max_height: int, step: int = 64,
                 min_side: Optional[int] = None) -> List[Tuple[int, int]]:
    """NovelAI-style (width, height) buckets: sides multiples of `step`, area at most max_width * max_height."""
    if min(max_width, max_height) < step:
        return [(max_width, max_height)]  # too small to bucket; everything trains at the one size
    area = max_width * max_height
    if min_side is None:  # half the shorter side, so a 64 x 64 run still gets its one bucket
        min_side = max(step, min(max_width, max_height) // 2 // step * step)
    max_side = min(area // min_side, 2 * max(max_width, max_height)) // step * step
    buckets = set()
    for w in range(min_side, max_side + 1, step):
        h = min(max_side, area // w // step * step)
        if h >= min_side:
            buckets.update({(w, h), (h, w)})
    return sorted(buckets, key=lambda b: (b[0] / b[1], b))


def nearest_bucket(width: int, height: int, buckets: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The bucket whose aspect ratio is closest to width / height (the larger one on a tie)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1], b))


def pixels_from_image(img: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 tensor [3, H, W] in [-1, 1], what a VAE encoder takes."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)) / 127.5 - 1.0


def alpha_weight(alpha: np.ndarray, latent_size: Tuple[int, int]) -> torch.Tensor:
    """An alpha map averaged down to latent size, [1, h, w] in [0, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    return F.interpolate(pixels, size=tuple(latent_size), mode="area")[0].clamp_(0.0, 1.0)


def _placement(size: Tuple[int, int], target: Tuple[int, int], mode: str) -> List[Tuple[int, int]]:
    """SDXL crop offsets (top, left) in resized-image pixels, for the image and for its mirror."""
    box = _source_box(size, target, mode)
    if mode == "stretch":
        return [(0, 0), (0, 0)]
    scale = target[0] / (box[2] - box[0])
    top, left, right = round(box[1] * scale), round(box[0] * scale), round((size[0] - box[2]) * scale)
    return [(top, left), (top, right)]


# ---------------------------------------------------------------------------------------------- the training set
@dataclass
class Batch:
    """Images that share a latent size, ready for one training forward pass."""

    latents: torch.Tensor                    # [B, C, h, w], float32, on the set's storage device
    prompts: List[str]                       # a template line drawn for each item, tags processed
    captions: List[str]                      # the raw captions
    weights: Optional[torch.Tensor]          # [B, 1, h, w] alpha weights in [0, 1]; None unless use_alpha_weight
    paths: List[str]
    epoch: int                               # 0-based pass over the set
    epoch_step: int                          # 0-based batch index within the epoch
    flipped: List[bool]
    original_sizes: List[Tuple[int, int]]    # (height, width) before resizing, as SDXL's add_time_ids want
    crop_top_lefts: List[Tuple[int, int]]    # (top, left) crop offsets, likewise
    target_size: Tuple[int, int]             # (height, width) in pixels of every item

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class _Item:
    """One image: caption, geometry and its latents, unflipped and (with flip on) mirrored."""

    path: str
    caption: str
    size: Tuple[int, int]                    # (width, height) after fitting
    original_size: Tuple[int, int]           # (height, width) before fitting
    crops: List[Tuple[int, int]]             # (top, left) per variant
    latents: list                            # per variant: (mean or sample, std or None)
    weight: Optional[torch.Tensor] = None    # [1, h, w] from alpha, None when opaque


@dataclass
class _Job:
    """One image variant waiting to be encoded."""

    item: _Item
    variant: int
    digest: str
    pixels: torch.Tensor
    alpha: Optional[np.ndarray] = None


class TrainingSet:
    """Every usable image of a folder, encoded once to latents, with captions, templates and batching.

    `encode(pixels)` receives CPU float32 pixels [B, 3, H, W] in [-1, 1] and returns (mean, std) of the already
    scaled latent Gaussian, each [B, C, H/8, W/8], on any device and dtype. `vae_key` must change whenever the VAE
    or the latent scaling changes, since it keys the disk cache.
    """

    def __init__(self, options: TrainOptions, encode: Encoder, vae_key: str, name: str, device=None,
                 generator: Optional[torch.Generator] = None, *, encode_batch_size: int = 4,
                 progress: Optional[Callable[[int, int], None]] = None):
        self.options = options
        self.name = name
        self.storage = torch.device(device) if device is not None else torch.device("cpu")
        self.lines = load_template(options.template)
        if options.filename_regex:
            compile_filename_regex(options.filename_regex)
        paths, self.ignored, self.caption_files = scan_folder(options.data, options.recursive)
        self.all_paths = list(paths)
        if not paths:
            raise DatasetError(options.data, self._no_images_message())
        self.bucket_sizes = (make_buckets(options.width, options.height) if options.resize == "buckets"
                             else [(options.width, options.height)])
        self._encode = encode
        self._cache = _LatentCache(options.latent_cache_dir, vae_key, options) if options.latent_cache_dir else None
        self.skipped: List[Tuple[str, str]] = []
        self.encoded = 0  # image variants sent to `encode` (cache misses)
        self._items = self._build(paths, max(1, int(encode_batch_size)), progress)
        self._finalise(generator)
        self._groups = self._group_by_latent_size()

    # ------------------------------------------------------------------ building
    def _no_images_message(self) -> str:
        """Why a folder has no images, with what it does hold and what to do."""
        message = f"no images found; accepted: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)}"
        if self.ignored:
            shown = ", ".join(Path(p).name for p in self.ignored[:5])
            message += f" (the folder holds {len(self.ignored)} other file(s): {shown})"
        if not self.options.recursive and scan_images(self.options.data, True)[0]:
            message += "; there are images in sub-folders: turn on recursive to read them"
        return message

    def _build(self, paths: List[str], encode_batch_size: int, progress) -> List[_Item]:
        """Read every image, take latents from the cache or queue them for `encode`, and encode by size."""
        variants = (False, True) if self.options.flip else (False,)
        items: List[_Item] = []
        queue: Dict[tuple, list] = {}
        for done, path in enumerate(paths, 1):
            try:
                item, jobs = self._prepare(path, variants)
            except DatasetError as exc:
                self.skipped.append((path, exc.reason))
                warnings.warn(f"skipping {exc}", HypernetWarning, stacklevel=3)
            else:
                items.append(item)
                for job in jobs:
                    group = queue.setdefault(item.size, [])
                    group.append(job)
                    if len(group) >= encode_batch_size:
                        self._encode_jobs(queue.pop(item.size))
            if progress is not None:
                progress(done, len(paths))
        self._report_skipped(len(paths))
        if not items:
            raise DatasetError(self.options.data, f"none of the {len(paths)} images could be read (see the warnings "
                                                  "above); re-save them as PNG or JPEG")
        for size in sorted(queue):
            self._encode_jobs(queue[size])
        self._report_empty_captions(items)
        return items

    def _report_empty_captions(self, items: List[_Item]) -> None:
        """Warn when [filewords] will be empty for some images, which usually means a naming mistake."""
        empty = [Path(item.path).name for item in items if not item.caption.strip()]
        if empty and any("[filewords]" in line for line in self.lines):
            warnings.warn(f"{self.options.data}: {len(empty)} image(s) have an empty caption (no .txt beside them, "
                          f"and nothing left of the file name once leading digits are removed): "
                          f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}; add <image>.txt captions",
                          HypernetWarning, stacklevel=4)

    def notes(self) -> List[str]:
        """What a user should know about the folder, one line each: skipped images with their reasons (file names
        only) and captions with no image beside them."""
        out = []
        if self.skipped:
            shown = "; ".join(f"{Path(p).name} ({reason})" for p, reason in self.skipped[:10])
            more = f"; and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            out.append(f"skipped {len(self.skipped)} of {len(self.all_paths)} images: {shown}{more}")
        orphans = self.orphan_captions()
        if orphans:
            shown = ", ".join(Path(p).name for p in orphans[:10]) + (" ..." if len(orphans) > 10 else "")
            out.append(f"{len(orphans)} caption file(s) have no image beside them: {shown}")
        return out

    def orphan_captions(self) -> List[str]:
        """.txt files in the folder whose image is missing (a renamed image, or a caption for a skipped format)."""
        stems = {os.path.splitext(p)[0] for p in self.all_paths}
        return [p for p in self.caption_files if os.path.splitext(p)[0] not in stems]

    def _report_skipped(self, total: int) -> None:
        """One summary warning naming every skipped image."""
        if self.skipped:
            names = ", ".join(Path(p).name for p, _ in self.skipped)
            warnings.warn(f"{self.options.data}: skipped {len(self.skipped)} of {total} images: {names}",
                          HypernetWarning, stacklevel=4)

    def _prepare(self, path: str, variants: Tuple[bool, ...]) -> Tuple[_Item, List[_Job]]:
        """An image's item, filled from the cache where possible, and the encode jobs still needed."""
        data = _read_bytes(path)
        caption = read_caption(path, self.options.filename_regex, self.options.filename_join)
        digest = hashlib.sha256(data).hexdigest()
        cached = [self._cache.get(digest, flipped) if self._cache else None for flipped in variants]
        if all(cached):
            return self._item_from_cache(path, caption, cached), []
        img, alpha = decode_image(data, path)
        target = (nearest_bucket(img.width, img.height, self.bucket_sizes) if self.options.resize == "buckets"
                  else (self.options.width, self.options.height))
        item = _Item(path, caption, target, (img.height, img.width),
                     _placement(img.size, target, self.options.resize)[:len(variants)], [None] * len(variants))
        pixels = pixels_from_image(fit_image(img, target[0], target[1], self.options.resize))
        fitted_alpha = None if alpha is None else fit_alpha(alpha, target[0], target[1], self.options.resize)
        jobs = []
        for variant, flipped in enumerate(variants):
            hit = cached[variant]
            if hit:
                item.latents[variant] = (hit.mean, hit.std)
                item.weight = hit.weight if variant == 0 else item.weight
            else:
                jobs.append(_Job(item, variant, digest, pixels.flip(-1) if flipped else pixels,
                                 fitted_alpha if variant == 0 else None))
        return item, jobs

    def _item_from_cache(self, path: str, caption: str, cached: list) -> _Item:
        """An item rebuilt entirely from cache entries, without decoding the image."""
        first = cached[0]
        return _Item(path, caption, first.size, first.original_size, [c.crop for c in cached],
                     [(c.mean, c.std) for c in cached], first.weight)

    def _encode_jobs(self, jobs: List[_Job]) -> None:
        """Encode same-sized variants in one call and store (and cache) their latents."""
        mean, std = _run_encode(self._encode, torch.stack([j.pixels for j in jobs]), [j.item.path for j in jobs])
        self.encoded += len(jobs)
        for job, m, s in zip(jobs, mean, std):
            m, s = m.clone(), s.clone()  # detach each from the batch's storage
            job.item.latents[job.variant] = (m, s)
            if job.variant == 0 and job.alpha is not None:
                job.item.weight = alpha_weight(job.alpha, m.shape[-2:])
            if self._cache is not None:
                self._cache.put(job, m, s)

    def _finalise(self, generator: Optional[torch.Generator]) -> None:
        """Apply the latent sampling mode, in file order so that cached and fresh runs draw the same noise."""
        mode = self.options.latent_sampling
        if generator is None:
            generator = torch.Generator()
            if self.options.seed >= 0:
                generator.manual_seed(self.options.seed)
            else:
                generator.seed()
        for item in self._items:
            for variant, (mean, std) in enumerate(item.latents):
                if mode == "once":
                    noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
                    item.latents[variant] = ((mean + std * noise).to(self.storage), None)
                elif mode == "deterministic":
                    item.latents[variant] = (mean.to(self.storage), None)
                else:
                    item.latents[variant] = (mean.to(self.storage), std.to(self.storage))
            if item.weight is not None:
                item.weight = item.weight.to(self.storage)
        if self.options.use_alpha_weight and all(item.weight is None for item in self._items):
            warnings.warn(f"{self.options.data}: use_alpha_weight is on but no image has transparency; every "
                          "pixel gets weight 1", HypernetWarning, stacklevel=3)

    def _group_by_latent_size(self) -> Dict[Tuple[int, ...], List[int]]:
        """Item indices grouped by latent shape, the unit batches are formed within."""
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for index, item in enumerate(self._items):
            groups.setdefault(tuple(item.latents[0][0].shape), []).append(index)
        return dict(sorted(groups.items()))

    # ------------------------------------------------------------------ validation
    def hold_out(self, count: int, rng: random.Random) -> List[_Item]:
        """Take `count` images out of training (chosen by `rng` from the sorted files) and return them."""
        if count >= len(self._items):
            raise ConfigError("validation_images", f"{count} images set aside would leave none of the "
                                                   f"{len(self._items)} usable images in {self.options.data} to "
                                                   "train on; set aside fewer, or 0 to draw from the training images")
        chosen = set(rng.sample(range(len(self._items)), count))
        held = [item for i, item in enumerate(self._items) if i in chosen]
        self._items = [item for i, item in enumerate(self._items) if i not in chosen]
        self._groups = self._group_by_latent_size()
        return held

    def example(self, item: _Item, rng: random.Random) -> Tuple[torch.Tensor, str, Optional[torch.Tensor]]:
        """One fixed (latent, prompt, weight) of an item: unflipped, the stored latent, a template line from `rng`
        with tags neither shuffled nor dropped, so it reads the same at every evaluation."""
        prompt = render_prompt(rng.choice(self.lines), self.name, item.caption, rng)
        latent = item.latents[0][0]
        weights = self._weights([item], [False], latent[None])
        return latent, prompt, None if weights is None else weights[0]

    @property
    def items(self) -> List[_Item]:
        """The images that train, in sorted file order."""
        return list(self._items)

    # ------------------------------------------------------------------ what the trainer reads
    def __len__(self) -> int:
        return len(self._items)

    @property
    def paths(self) -> List[str]:
        """The image files in use, in sorted order."""
        return [item.path for item in self._items]

    @property
    def captions(self) -> List[str]:
        """The raw caption of each image, in the order of `paths`."""
        return [item.caption for item in self._items]

    @property
    def bucket_counts(self) -> Dict[Tuple[int, int], int]:
        """How many images train at each (width, height)."""
        counts: Dict[Tuple[int, int], int] = {}
        for item in self._items:
            counts[item.size] = counts.get(item.size, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def static_prompts(self) -> bool:
        """True when every image always gets the same prompt, so text encodings can be computed once."""
        o = self.options
        return len(self.lines) == 1 and not o.shuffle_tags and o.tag_dropout <= 0 and o.caption_dropout <= 0

    def possible_prompts(self) -> Optional[List[str]]:
        """Every prompt a batch can contain, when that set is finite (no tag shuffle or dropout); else None."""
        if self.options.shuffle_tags or self.options.tag_dropout > 0:
            return None
        rng = random.Random(0)  # unused without shuffle or dropout
        prompts = {render_prompt(line, self.name, item.caption, rng) for line in self.lines for item in self._items}
        return sorted(prompts | ({""} if self.options.caption_dropout > 0 else set()))

    def batches_per_epoch(self, batch_size: int) -> int:
        """How many batches one epoch yields at this batch size (a smaller last batch per size group counts)."""
        size = self._batch_size(batch_size)
        return sum(math.ceil(len(group) / size) for group in self._groups.values())

    def _batch_size(self, batch_size: int) -> int:
        """The requested batch size, at least 1 and at most the number of images (as the webui caps it)."""
        return max(1, min(int(batch_size), len(self._items)))

    def batches(self, batch_size: int, rng: random.Random, epochs: Optional[int] = None) -> Iterator[Batch]:
        """Batches for `epochs` passes over the set (forever when None), everything drawn from `rng`."""
        size = self._batch_size(batch_size)
        noise = torch.Generator().manual_seed(rng.getrandbits(63))
        epoch = 0
        while epochs is None or epoch < epochs:
            for step, indices in enumerate(self._epoch_plan(size, rng)):
                yield self._make_batch(indices, rng, noise, epoch, step)
            epoch += 1

    def _epoch_plan(self, batch_size: int, rng: random.Random) -> List[List[int]]:
        """One epoch: each size group shuffled and cut into batches (the last may be smaller), batches shuffled."""
        plan: List[List[int]] = []
        for group in self._groups.values():
            order = list(group)
            rng.shuffle(order)
            plan.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
        rng.shuffle(plan)
        return plan

    def _make_batch(self, indices: List[int], rng: random.Random, noise: torch.Generator, epoch: int,
                    step: int) -> Batch:
        """Stack the chosen items, picking a flip, a template line and tag processing for each."""
        items = [self._items[i] for i in indices]
        flips = [self.options.flip and rng.random() < 0.5 for _ in items]
        prompts = [self._prompt(item, rng) for item in items]
        chosen = [item.latents[int(f)] for item, f in zip(items, flips)]
        latents = torch.stack([c[0] for c in chosen])
        if self.options.latent_sampling == "random":
            std = torch.stack([c[1] for c in chosen])
            latents = latents + std * torch.randn(latents.shape, generator=noise).to(latents.device)
        return Batch(latents=latents, prompts=prompts, captions=[i.caption for i in items],
                     weights=self._weights(items, flips, latents), paths=[i.path for i in items], epoch=epoch,
                     epoch_step=step, flipped=flips, original_sizes=[i.original_size for i in items],
                     crop_top_lefts=[i.crops[int(f)] for i, f in zip(items, flips)],
                     target_size=(items[0].size[1], items[0].size[0]))

    def _prompt(self, item: _Item, rng: random.Random) -> str:
        """A freshly drawn template line filled in for one use of an item; "" when the whole caption is dropped."""
        o = self.options
        # Drawn from the batch stream only when on, so runs without it draw exactly what they always did.
        if o.caption_dropout > 0 and rng.random() < o.caption_dropout:
            return ""
        return render_prompt(rng.choice(self.lines), self.name, item.caption, rng, o.shuffle_tags, o.tag_dropout,
                             o.keep_tags)

    def _weights(self, items: List[_Item], flips: List[bool], latents: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-item alpha weights [B, 1, h, w], mirrored with their latents; ones for opaque images."""
        if not self.options.use_alpha_weight:
            return None
        ones = torch.ones((1,) + tuple(latents.shape[-2:]), device=latents.device)
        maps = [ones if i.weight is None else (i.weight.flip(-1) if f else i.weight) for i, f in zip(items, flips)]
        return torch.stack(maps)


def _run_encode(encode: Encoder, pixels: torch.Tensor, paths: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`encode` under no_grad, halving the batch on out-of-memory, with its output checked and moved to CPU."""
    try:
        with torch.no_grad():
            mean, std = encode(pixels)
    except _OOM:
        if len(pixels) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(pixels) // 2
        first = _run_encode(encode, pixels[:half], paths[:half])
        second = _run_encode(encode, pixels[half:], paths[half:])
        return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
    return _check_encoded(mean, std, len(pixels), paths)


def _check_encoded(mean, std, count: int, paths: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The encoder's (mean, std) as CPU float32 of one shape, or an error that says what went wrong."""
    if not isinstance(mean, torch.Tensor) or mean.dim() != 4 or mean.shape[0] != count:
        raise HypernetError(f"the VAE encode function returned {getattr(mean, 'shape', type(mean))} for {count} "
                            "images; it must return (mean, std), each [B, C, H/8, W/8]")
    mean = mean.detach().float().cpu()
    std = torch.as_tensor(std).detach().float().cpu().expand_as(mean).contiguous()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        names = ", ".join(Path(p).name for p in paths)
        raise DatasetError(paths[0] if count == 1 else Path(paths[0]).parent,
                           f"the VAE returned NaN or infinite latents for {names}; run the VAE in float32 "
                           "(in the webui: --no-half-vae), which SDXL's VAE needs")
    return mean, std


# ---------------------------------------------------------------------------------------------- disk cache
@dataclass
class _Cached:
    """One cache entry: an image variant's latent Gaussian and the geometry it was made with."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: Optional[torch.Tensor]
    size: Tuple[int, int]
    original_size: Tuple[int, int]
    crop: Tuple[int, int]


@dataclass
class _LatentCache:
    """Latents on disk, one safetensors file per image variant, keyed by content and every setting that shapes
    them (the bucket follows from the image bytes and width x height, so those suffice)."""

    folder: str
    vae_key: str
    options: TrainOptions
    broken: bool = field(default=False)

    def key(self, digest: str, flipped: bool) -> str:
        """The file name stem for one image variant."""
        o = self.options
        text = f"{CACHE_FORMAT}|{CACHE_VERSION}|{self.vae_key}|{o.width}x{o.height}|{o.resize}|{int(flipped)}|{digest}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, digest: str, flipped: bool) -> Path:
        """Where an entry lives."""
        return Path(self.folder).expanduser() / f"{self.key(digest, flipped)}.safetensors"

    def get(self, digest: str, flipped: bool) -> Optional[_Cached]:
        """The entry for an image variant, or None when absent or unreadable (it is then rebuilt)."""
        path = self.path(digest, flipped)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            return _Cached(tensors["mean"], tensors["std"], tensors.get("weight"), _pair(meta["size"]),
                           _pair(meta["original_size"]), _pair(meta["crop"]))
        except Exception:  # noqa: BLE001 -- a damaged entry is only a cache miss
            return None

    def put(self, job: _Job, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store an encoded variant atomically; a cache that cannot be written is reported once, then left alone."""
        if self.broken:
            return
        item = job.item
        tensors = {"mean": mean.contiguous(), "std": std.contiguous()}
        if job.variant == 0 and item.weight is not None:
            tensors["weight"] = item.weight.contiguous()
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": Path(item.path).name,
                "size": _unpair(item.size), "original_size": _unpair(item.original_size),
                "crop": _unpair(item.crops[job.variant])}
        try:
            atomic_write(self.path(job.digest, bool(job.variant)), safetensors_bytes(tensors, metadata=meta))
        except HypernetError as exc:
            self.broken = True
            warnings.warn(f"latent cache not written, training goes on without it: {exc}", HypernetWarning,
                          stacklevel=2)


def _pair(text: str) -> Tuple[int, int]:
    """'a,b' as (a, b)."""
    a, b = text.split(",")
    return int(a), int(b)


def _unpair(pair: Tuple[int, int]) -> str:
    """(a, b) as 'a,b'."""
    return f"{int(pair[0])},{int(pair[1])}"
