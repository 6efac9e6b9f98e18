"""The creation-options dataclass: the one place where defaults and validation rules live."""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .bounds import (MAX_LAYERS, MAX_LIST_ENTRIES, MAX_SIZE, MAX_STEP, MAX_WIDTHS, MIN_SIZE, brief, check_name,
                     check_path, whole_number)
from .errors import ConfigError

_BASE_ACTIVATIONS = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,  # the webui's "swish" has always been Hardswish
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}


def _constructible_without_arguments(cls) -> bool:
    try:
        cls()
    except Exception:
        return False
    return True


def _activation_table() -> dict:
    """Map every activation name the webui accepts (and can build without arguments) to its class."""
    table = dict(_BASE_ACTIVATIONS)
    for cls_name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation" and cls_name.lower() not in table:
            if _constructible_without_arguments(cls):
                table[cls_name.lower()] = cls
    return table


ACTIVATIONS: dict = _activation_table()
WEIGHT_INITS = ("Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal")
# Widths users pick from: SD1 cross (768), SD2 cross (1024), SDXL cross (2048), self-attention (320/640/1280).
COMMON_DIMS = (320, 640, 768, 1024, 1280, 2048)
# Which base model a cross-attention width means; the one table every listing, card and warning reads.
KNOWN_CROSS = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
# Bounds that keep a typo (or a crafted file's metadata) from asking for terabytes: the widest text encoder in
# use today is 4096 wide, and the webui's default hypernetwork has 22 million parameters.
MAX_WIDTH = 16384
MAX_PARAMETERS = 2_000_000_000
MAX_MULTIPLIER = 1024             # a layer structure's entry: beyond it the parameter limit is passed anyway


def _split_numbers(value: Any, field_name: str, convert, limit: int = MAX_LAYERS) -> list:
    """Turn "1, 2, 1", [1, 2, 1] or (1, 2, 1) into a list of numbers, naming the field on failure."""
    if isinstance(value, str):
        parts = re.split(r"[,\s]+", value.strip(), maxsplit=limit)
        parts = [p for p in parts if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value[:limit + 1])
    else:
        raise ConfigError(field_name, f"expected a comma-separated list of numbers, got {brief(value)}")
    if len(parts) > limit:
        raise ConfigError(field_name, f"has more than {limit} entries")
    out = []
    for part in parts:
        if isinstance(part, bool) or (isinstance(part, str) and len(part) > 40):
            raise ConfigError(field_name, f"expected numbers, got {brief(part, 40)}")
        try:
            number = convert(part)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(field_name, f"{brief(part)} is not a number; write it like \"1, 2, 1\"") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(field_name, f"{brief(part)} is not a finite number")
        out.append(number)
    return out


def _to_int(value) -> int:
    if isinstance(value, int):
        return value
    number = float(value)
    if number != int(number):
        raise ValueError(value)
    return int(number)


@dataclass
class CreateOptions:
    """Everything that defines a hypernetwork's architecture; stored in every file it is saved to."""

    name: str = field(default="hypernetwork", metadata={
        "essential": True, "label": "Hypernetwork name", "help": "name stored in the file and used in <hypernet:NAME> tags"})
    dims: list = field(default_factory=lambda: [768, 320, 640, 1280], metadata={
        "essential": True,
        "help": "context widths to create modules for: 768 (SD1 cross), 1024 (SD2 cross), 2048 (SDXL cross), "
                "320/640/1280 (self-attention); any other positive width works for other models"})
    layer_structure: list = field(default_factory=lambda: [1.0, 2.0, 1.0], metadata={
        "essential": True,
        "help": "width multipliers of the MLP layers, starting and ending with 1, e.g. \"1, 2, 1\""})
    activation: str = field(default="relu", metadata={
        "essential": True, "help": "activation between layers ('linear' for none)", "choices": tuple(ACTIVATIONS)})
    weight_init: str = field(default="Normal", metadata={
        "help": "weight initialisation", "choices": WEIGHT_INITS})
    layer_norm: bool = field(default=False, metadata={
        "help": "add a LayerNorm after every layer, the output layer included (as the webui does)"})
    dropout_structure: Optional[list] = field(default=None, metadata={
        "help": "dropout probability after each layer, same length as the layer structure, e.g. \"0, 0.1, 0\"; "
                "empty for none"})
    activate_output: bool = field(default=False, metadata={
        "help": "also apply the activation after the output layer (legacy behaviour)"})

    def __post_init__(self):
        self.name = self._check_name(self.name)
        self.dims = self._check_dims(self.dims)
        self.layer_structure = self._check_layer_structure(self.layer_structure)
        self.activation = self._check_choice("activation", "linear" if self.activation is None else self.activation,
                                             ACTIVATIONS, lower=True)
        self.weight_init = self._check_choice("weight_init", self.weight_init, WEIGHT_INITS)
        self.layer_norm = self._check_bool("layer_norm", self.layer_norm)
        self.activate_output = self._check_bool("activate_output", self.activate_output)
        self.dropout_structure = self._check_dropout(self.dropout_structure)
        self._check_size()

    def _check_size(self) -> None:
        count = self.parameter_count()
        if count > MAX_PARAMETERS:
            raise ConfigError("layer_structure", f"widths {self.dims} with layer structure "
                                                 f"{_fmt(self.layer_structure)} give {count:,} parameters "
                                                 f"({count * 4 / 2**30:.1f} GiB), over the {MAX_PARAMETERS:,} limit; "
                                                 "use fewer widths or smaller multipliers")

    def parameter_count(self) -> int:
        """Weights of the linear and layer-norm layers (k and v, every width); PReLU adds one per activation."""
        total = 0
        for dim in self.dims:
            widths = self.widths(dim)
            per = sum(a * b + b for a, b in zip(widths, widths[1:]))
            per += sum(2 * b for b in widths[1:]) if self.layer_norm else 0
            total += 2 * per
        return total

    @staticmethod
    def _check_name(name) -> str:
        return check_name(name, "name")

    @staticmethod
    def _check_dims(dims) -> list:
        if isinstance(dims, int) and not isinstance(dims, bool):
            dims = [dims]
        values = _split_numbers(dims, "dims", _to_int, MAX_WIDTHS)
        if not values:
            raise ConfigError("dims", f"needs at least one width, e.g. {', '.join(map(str, COMMON_DIMS))}")
        bad = [d for d in values if not 0 < d <= MAX_WIDTH]
        if bad:
            raise ConfigError("dims", f"widths must be positive whole numbers up to {MAX_WIDTH}, got "
                                      f"{', '.join(brief(d, 30) for d in bad[:5])}")
        if len(set(values)) != len(values):
            raise ConfigError("dims", f"each width may appear once, got {values}")
        return sorted(values)

    @staticmethod
    def _check_layer_structure(structure) -> list:
        values = [float(v) for v in _split_numbers(structure, "layer_structure", float)]
        if len(values) < 2:
            raise ConfigError("layer_structure", f"needs at least two entries, like \"1, 2, 1\"; got {values}")
        if values[0] != 1 or values[-1] != 1:
            raise ConfigError("layer_structure", f"must start and end with 1 (the MLP maps a width back onto itself), "
                                                 f"e.g. \"1, 2, 1\"; got {_fmt(values)}")
        if any(not 0 < v <= MAX_MULTIPLIER for v in values):
            raise ConfigError("layer_structure", f"every entry must be > 0 and at most {MAX_MULTIPLIER}; got "
                                                 f"{_fmt(values)}")
        return values

    @staticmethod
    def _check_choice(field_name, value, choices, lower=False) -> str:
        if not isinstance(value, str):
            raise ConfigError(field_name, f"expected a name, got {brief(value)}")
        key = value.strip().lower() if lower else value.strip()
        if key not in choices:
            raise ConfigError(field_name, f"unknown value {brief(value)}; accepted: {', '.join(choices)}")
        return key

    @staticmethod
    def _check_bool(field_name, value) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(field_name, f"expected true or false, got {brief(value)}")

    def _check_dropout(self, dropout) -> list:
        if dropout is None or (isinstance(dropout, str) and not dropout.strip()):
            return [0.0] * len(self.layer_structure)
        values = [float(v) for v in _split_numbers(dropout, "dropout_structure", float)]
        if len(values) != len(self.layer_structure):
            raise ConfigError("dropout_structure", f"needs {len(self.layer_structure)} entries, one per entry of "
                                                   f"layer_structure {_fmt(self.layer_structure)}; got {_fmt(values)}")
        bad = [v for v in values if not 0 <= v < 1]
        if bad:
            raise ConfigError("dropout_structure", f"each entry must be in [0, 1); got {_fmt(bad)}")
        return values

    def widths(self, dim: int) -> list:
        """The layer widths for one context width, truncated with int() as the webui does."""
        return [int(dim * m) for m in self.layer_structure]

    @property
    def use_dropout(self) -> bool:
        return any(p > 0 for p in self.dropout_structure or ())

    def replace(self, **changes) -> "CreateOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

def field_default(f: dataclasses.Field):
    """An option field's default value, from its default or its factory: what the UIs, the CLI and the API show."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]


def base_models(dims) -> list:
    """["SD1"], ["SD1", "SDXL"]...: the base models whose cross-attention widths are among `dims`."""
    return [KNOWN_CROSS[d] for d in sorted(dims) if d in KNOWN_CROSS]


def made_for(dims) -> Optional[str]:
    """"SD1", "SD2", "SDXL" (several joined by '/') from the cross-attention widths among `dims`; None if none."""
    return "/".join(base_models(dims)) or None


def parse_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list:
    """The webui's legacy dropout structure for files that only say use_dropout / last_layer_dropout."""
    n = len(layer_structure)
    if not use_dropout:
        return [0.0] * n
    return [0.0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0.0] + [0.0]


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


RESIZE_MODES = ("crop", "stretch", "buckets")
LATENT_SAMPLING = ("once", "deterministic", "random")
# Lion, Prodigy and Adafactor come from their maintained packages (lion-pytorch, prodigyopt, transformers).
OPTIMIZERS = ("AdamW", "Adam", "SGD", "AdamW8bit", "Lion", "Prodigy", "Adafactor")
CLIP_MODES = ("disabled", "value", "norm")
PRECISIONS = ("auto", "no", "fp16", "bf16")
LR_SHAPES = ("constant", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # a precision's name -> dtype


def _opt(default, help_text, **extra):
    """A dataclass field with CLI/UI metadata (`group` places it in the UI; `essential` shows it first, the rest
    sits in closed accordions)."""
    meta = {"help": help_text, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    """Every training option; the CLI flags, UI defaults, API model and settings.json all come from here."""

    # data
    data: str = _opt("", "folder of training images (captions in <image>.txt or the file name)",
                     group="data", essential=True)
    recursive: bool = _opt(False, "also read images in sub-folders", group="data")
    template: str = _opt("style_filewords", "prompt template: a shipped name (style, style_filewords, subject, "
                         "subject_filewords, hypernetwork, none) or a .txt file of lines with [name] and [filewords]",
                         group="data", essential=True)
    # A UI label of its own where the webui's Train tab has the same one: the webui keeps every field's value in
    # ui-config.json under "<tab>/<label>", and two fields with one label would share it.
    width: int = _opt(512, "training width (multiple of 8; the maximum area with buckets)",
                      group="data", essential=True, label="Training width")
    height: int = _opt(512, "training height (multiple of 8)", group="data", essential=True,
                       label="Training height")
    resize: str = _opt("crop", "fit images to width x height: center crop, stretch (the webui's way) or aspect "
                       "buckets", choices=RESIZE_MODES, group="data")
    flip: bool = _opt(False, "random horizontal flips", group="data")
    filename_regex: str = _opt("", "regex whose matches in the file name form the caption when there is no .txt "
                               "(the webui's dataset_filename_word_regex)", group="data")
    filename_join: str = _opt(" ", "string joining those matches", group="data")
    shuffle_tags: bool = _opt(False, "shuffle comma-separated caption tags each step", group="data")
    tag_dropout: float = _opt(0.0, "probability of dropping each caption tag each step", group="data")
    keep_tags: int = _opt(0, "keep the first N tags fixed when shuffling or dropping", group="data")
    caption_dropout: float = _opt(0.0, "probability of training an image with an empty prompt each step "
                                  "(kohya's caption_dropout_rate)", group="data")
    latent_sampling: str = _opt("once", "VAE latents: one fixed sample, the mean, or a new sample each use",
                                choices=LATENT_SAMPLING, group="data")
    use_alpha_weight: bool = _opt(False, "use image transparency as a per-pixel loss weight", group="data")
    latent_cache_dir: str = _opt("", "folder for a disk cache of encoded latents (empty: memory only)", group="data")
    vae: str = _opt("", "encode the images with this VAE instead of the model's: a diffusers AutoencoderKL folder or "
                    "a .safetensors VAE file (diffusers models; in the webui pick it in the SD VAE setting)",
                    group="data")
    cache_text_embeddings: bool = _opt(True, "encode every prompt the captions and template can make once, before "
                                       "step 0 (when tags are neither shuffled nor dropped), and free the text "
                                       "encoder and VAE while no preview needs them", group="data")
    clip_skip: int = _opt(0, "condition on the text encoder's N-th layer from the end (2 for anime models trained "
                          "so); 0: the host's own setting (the webui's Clip skip, else 1). SDXL already uses its "
                          "penultimate layer: values up to 2 keep that, larger ones go further back", group="data")
    # optimisation
    steps: int = _opt(1000, "train until this many steps in total (a resumed file counts its steps)",
                      group="train", essential=True)
    batch_size: int = _opt(1, "images per batch", group="train", essential=True, label="Images per batch")
    gradient_accumulation: int = _opt(1, "batches per optimizer step", group="train")
    learning_rate: str = _opt("0.00001", "learning rate, or a schedule \"rate:step, rate:step, rate\"",
                              group="train", essential=True)
    lr_warmup_steps: int = _opt(0, "linear warmup over the first N steps", group="train")
    lr_shape: str = _opt("constant", "multiply the schedule by a decay over the run (after the warmup): cosine "
                         "to zero, cosine with lr_cycles hard restarts, polynomial of power lr_power to zero; "
                         "constant_with_warmup is constant (set lr_warmup_steps)", choices=LR_SHAPES, group="train")
    lr_cycles: int = _opt(1, "cosine_with_restarts: how many cosine cycles the run makes", group="train")
    lr_power: float = _opt(1.0, "polynomial: the decay's power (1 = linear)", group="train")
    optimizer: str = _opt("AdamW", "optimizer", choices=OPTIMIZERS, group="train")
    weight_decay: float = _opt(0.01, "weight decay (AdamW's default)", group="train")
    beta1: float = _opt(0.9, "Adam beta1 (SGD momentum)", group="train")
    beta2: float = _opt(0.999, "Adam beta2", group="train")
    eps: float = _opt(1e-8, "Adam epsilon", group="train")
    clip_grad_mode: str = _opt("disabled", "gradient clipping", choices=CLIP_MODES, group="train")
    clip_grad_value: str = _opt("0.1", "clip threshold, or a schedule like the learning rate", group="train")
    min_snr_gamma: float = _opt(0.0, "min-SNR loss weighting gamma (0 = off; 5 is common)", group="train")
    noise_offset: float = _opt(0.0, "noise offset (0 = off; 0.05-0.1 helps very dark or bright images)",
                               group="train")
    timestep_min: int = _opt(0, "lowest training timestep", group="train")
    timestep_max: int = _opt(1000, "highest training timestep (exclusive)", group="train")
    mixed_precision: str = _opt("auto", "autocast precision on CUDA (auto: bf16 where supported, else fp16)",
                                choices=PRECISIONS, group="train")
    gradient_checkpointing: bool = _opt(False, "recompute UNet blocks in backward to save memory", group="train")
    max_nan_steps: int = _opt(5, "stop after this many non-finite losses in a row", group="train")
    seed: int = _opt(-1, "random seed (-1: pick one and record it)", group="train")
    # output
    log_dir: str = _opt("logs", "folder for dated run folders with copies, previews and the loss log",
                        group="output")
    output: str = _opt("", "where the final file goes (default: <log_dir>/<name>.pt)", group="output")
    overwrite: bool = _opt(False, "the final file may replace an existing file (continuing a hypernetwork into its own "
                           "file never needs this)", group="output")
    save_every: int = _opt(500, "save a numbered copy every N steps (0 = never)", group="output", essential=True)
    save_optimizer_state: bool = _opt(True, "write a .optim beside each save, for exact resume", group="output")
    keep_last_copies: int = _opt(0, "keep only the last N numbered copies this run saved, with their .optim "
                                 "(0 = keep all; the final file is never removed)", group="output")
    save_precision: str = _opt("fp32", "weights' precision in saved files (fp16 halves the size; every webui "
                               "reads it; training state stays fp32)", choices=SAVE_PRECISIONS, group="output")
    log_every: int = _opt(10, "write a loss CSV row every N steps", group="output")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)", group="output")
    wandb: bool = _opt(False, "also log to Weights & Biases (needs the wandb package; WANDB_MODE=offline logs "
                       "without an account)", group="output")
    wandb_project: str = _opt("hypernet", "Weights & Biases project name", group="output")
    validation_every: int = _opt(100, "score the fixed validation draws every N steps and at every save "
                                 "(0 = never); a smooth curve to pick the copy before over-training",
                                 group="validation")
    validation_draws: int = _opt(8, "fixed (image, noise, timestep) draws in the validation set", group="validation")
    validation_images: int = _opt(0, "images set aside for validation and never trained on (0: the draws come "
                                  "from the training images, for small folders)", group="validation")
    probe_draws: int = _opt(1, "fixed noises each probe prompt is measured at, at step 0, every save and the end: "
                            "'prompt kept' (how much prompts still steer the model, 1 = as without the "
                            "hypernetwork) and 'style strength' (how far it moves the training captions' "
                            "predictions); 0 = never", group="validation")
    probe_prompts_file: str = _opt("", "a text file of probe prompts for 'prompt kept', one per line (# comments), "
                                   "unlike your captions (empty: sixteen varied prompts shipped with hypernet)",
                                   group="validation")
    prompt_kept_goal: float = _opt(0.9, "the suggested copy: the strongest style among copies keeping at least "
                                   "this much of the prompt (else the copy keeping most)", group="validation")
    preview_every: int = _opt(500, "generate a preview image every N steps (0 = never)",
                              group="preview", essential=True)
    preview_prompt: str = _opt("", "preview prompt (empty: the current batch's caption)", group="preview")
    preview_prompts_file: str = _opt("", "a text file of preview prompts, one per line, each rendered at every "
                                     "preview step; kohya's inline options --n negative --w width --h height "
                                     "--s steps --d seed --l cfg --ss sampler; lines starting with # are comments",
                                     group="preview")
    preview_negative_prompt: str = _opt("", "preview negative prompt", group="preview")
    preview_steps: int = _opt(20, "preview sampling steps", group="preview")
    preview_cfg_scale: float = _opt(7.0, "preview guidance scale", group="preview")
    preview_seed: int = _opt(-1, "preview seed (-1: random)", group="preview")
    preview_sampler: str = _opt("", "preview sampler name in the webui, e.g. \"Euler a\" (empty: the webui's "
                                "default; diffusers uses the pipeline's scheduler)", group="preview")
    preview_width: int = _opt(0, "preview width (0: training width)", group="preview")
    preview_height: int = _opt(0, "preview height (0: training height)", group="preview")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(f.name, value, type(field_default(f))))
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f.name, f"unknown value {brief(value)}; accepted: {', '.join(choices)}")
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ConfigError(name, f"must be a multiple of 8, got {getattr(self, name)}")
        for name in PATH_FIELDS:
            check_path(getattr(self, name), name)
        for name in ("weight_decay", "eps", "min_snr_gamma", "noise_offset", "prompt_kept_goal"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("tag_dropout", "caption_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.lr_power <= 0:
            raise ConfigError("lr_power", f"must be > 0, got {self.lr_power}")
        if not 0 <= self.timestep_min < self.timestep_max <= 1000:
            raise ConfigError("timestep_max", f"need 0 <= timestep_min < timestep_max <= 1000, got "
                                              f"{self.timestep_min}..{self.timestep_max}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")
        from .train.schedule import parse_schedule
        parse_schedule(self.learning_rate, self.steps, field="learning_rate")
        if self.clip_grad_mode != "disabled":
            parse_schedule(self.clip_grad_value, self.steps, field="clip_grad_value")

    def replace(self, **changes) -> "TrainOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value, kind, limits: Optional[dict] = None):
    """Accept the string forms UIs and APIs send, and refuse anything else with the field named; a whole number
    is range-checked (INT_LIMITS) before anything uses it."""
    if kind is bool:
        return CreateOptions._check_bool(name, value)
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name in (
                "learning_rate", "clip_grad_value"):
            return repr(float(value))  # the API may send a number
        if not isinstance(value, str):
            raise ConfigError(name, f"expected text, got {brief(value)}")
        return value
    if kind is int:
        return whole_number(value, name, *(limits or INT_LIMITS).get(name, (0, MAX_STEP)))
    try:
        if isinstance(value, bool) or (isinstance(value, str) and len(value) > 40):
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(name, f"expected a number, got {brief(value)}") from None


# Whole-number options whose range is not the default 0..10**9; each value is checked against its range before
# anything uses it (a width of 10**9 would allocate before failing, a step count of 10**4000 overflow).
INT_LIMITS = {"width": (MIN_SIZE, MAX_SIZE), "height": (MIN_SIZE, MAX_SIZE), "preview_width": (0, MAX_SIZE),
              "preview_height": (0, MAX_SIZE), "seed": (-1, 2 ** 63 - 1), "preview_seed": (-1, 2 ** 63 - 1),
              **{name: (1, MAX_STEP) for name in ("steps", "batch_size", "gradient_accumulation", "preview_steps",
                                                  "max_nan_steps", "lr_cycles", "validation_draws")}}
COMPARE_LIMITS = {"width": (0, MAX_SIZE), "height": (0, MAX_SIZE), "steps": (1, MAX_STEP), "seed": (-1, 2 ** 63 - 1)}
# Options that name a file or folder: checked as paths (no NUL, a sane length) with the rest.
PATH_FIELDS = ("data", "template", "latent_cache_dir", "vae", "log_dir", "output", "preview_prompts_file",
               "probe_prompts_file")


@dataclass
class CompareOptions:
    """How saved copies are compared: one grid, a row per copy, a column per prompt and strength, fixed seeds."""

    prompt: str = _opt("", "prompt, one per line (empty: the run's preview prompt, else its first caption)",
                       essential=True)
    strengths: str = _opt("0, 0.5, 1", "strengths, comma-separated; 0 is the model without any hypernetwork",
                          essential=True)
    seed: int = _opt(1, "seed of every image (the same throughout the grid)", essential=True)
    negative_prompt: str = _opt("", "negative prompt")
    steps: int = _opt(20, "sampling steps")
    cfg_scale: float = _opt(7.0, "guidance scale")
    width: int = _opt(0, "image width (0: the run's training width)")
    height: int = _opt(0, "image height (0: the run's training height)")
    sampler: str = _opt("", "sampler name in the webui, e.g. \"Euler a\" (empty: the webui's default; diffusers "
                        "uses the pipeline's scheduler)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), type(f.default), COMPARE_LIMITS))
        self.strength_list()
        if self.steps < 1:
            raise ConfigError("steps", f"must be at least 1, got {self.steps}")
        for name in ("width", "height"):
            if getattr(self, name) < 0 or getattr(self, name) % 8:
                raise ConfigError(name, f"must be 0 or a positive multiple of 8, got {getattr(self, name)}")

    def prompts(self) -> list:
        """The non-empty prompt lines."""
        return [line.strip() for line in self.prompt.splitlines() if line.strip()]

    def strength_list(self) -> list:
        """The strengths as floats, each checked as a tag's strength is."""
        from .tags import TagError, strength_value
        if self.strengths.count(",") >= MAX_LIST_ENTRIES:
            raise ConfigError("strengths", f"give at most {MAX_LIST_ENTRIES:,} strengths")
        values = [v.strip() for v in self.strengths.split(",") if v.strip()]
        if not values:
            raise ConfigError("strengths", "give at least one strength, e.g. \"0, 0.5, 1\"")
        try:
            return [strength_value(v) for v in values]
        except TagError as exc:
            raise ConfigError("strengths", str(exc)) from None

    def replace(self, **changes) -> "CompareOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEMO_RECIPES = ("hypernet", "webui")


@dataclass
class DemoOptions:
    """Options of `python -m hypernet demo` (the built-in tiny model, a style set, training and a comparison)."""

    out: str = _opt("hypernet-demo", "output folder")
    data: str = _opt("", "your own image folder (captions in <image>.txt) instead of the bundled style set")
    steps: int = _opt(300, "training steps")
    recipe: str = _opt("hypernet", "training recipe: ours, or the webui's defaults (its activation, learning rate, "
                       "template and resize)", choices=DEMO_RECIPES)
    learning_rate: str = _opt("", "learning rate or schedule (empty: the recipe's)")
    batch_size: int = _opt(4, "images per step")
    seed: int = _opt(0, "seed for the style set, training and the comparison")
    copies: int = _opt(6, "saved copies measured along the run")
    measure_prompts: int = _opt(128, "unseen prompts each copy is measured on (style shift and content kept)")
    probe_prompts: int = _opt(16, "of those, how many the trainer's 'prompt kept' measure probes with")
    dtype: str = _opt("fp32", "the frozen model's precision while training (fp16, bf16: as a half-precision host "
                      "trains); every measure samples in fp32", choices=tuple(DTYPES))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), type(f.default)))
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"unknown value {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        if self.recipe not in DEMO_RECIPES:
            raise ConfigError("recipe", f"unknown value {self.recipe!r}; accepted: {', '.join(DEMO_RECIPES)}")
        for name in ("steps", "batch_size", "copies", "measure_prompts", "probe_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.learning_rate:
            from .train.schedule import parse_schedule
            parse_schedule(self.learning_rate, self.steps, field="learning_rate")
