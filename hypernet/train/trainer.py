"""The training loop: a frozen model, a trainable hypernetwork, MSE on the noise (or v) prediction."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import math
import os
import random
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from . import distributed, probe, schedule, timing, validation
from ..attach import attach
from ..config import DTYPES, CreateOptions, TrainOptions
from ..errors import HypernetError
from ..fileformat.files import atomic_write, load, save_optimizer
from ..network import Hypernetwork

log = logging.getLogger("hypernet")
# The webui's columns first (its tools read them by position); the rest are ours, empty where not evaluated.
CSV_COLUMNS = ("step", "epoch", "epoch_step", "loss", "learn_rate", "val_loss", "prompt_kept", "style")
TRAINER_STATE_KEY = "hypernet_trainer_state"  # extra .optim key; the webui ignores keys it does not know
TEXT_CACHE_BYTES = 1 << 30  # text embeddings kept at most; beyond it they are encoded as batches draw them


# ---------------------------------------------------------------------------------------------- pure math
def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a) * x0 + sqrt(1 - a) * noise, with a the cumulative alpha per sample."""
    a = alpha_bar.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the UNet should output: the noise (epsilon) or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    if prediction_type == "epsilon":
        return noise
    a = alpha_bar.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predicted_x0(prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor,
                 alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent a prediction implies: (x_t - sqrt(1 - a) * eps) / sqrt(a), or sqrt(a) * x_t - sqrt(1 - a) * v."""
    a = alpha_bar.view(-1, *([1] * (x_t.dim() - 1)))
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * pred


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight min(SNR, gamma) / SNR (or / (SNR + 1) for v), 1 when gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v" else clipped / snr


def sample_noise(shape, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus an optional per-channel offset (the 'noise offset' trick)."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((shape[0], shape[1]) + (1,) * (len(shape) - 2), generator=generator)
    return noise


def sample_timesteps(n: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integer timesteps in [low, high)."""
    return torch.randint(low, high, (n,), generator=generator)


def per_sample_loss(pred: torch.Tensor, tgt: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared error over C, H, W for each sample, optionally weighted per pixel (normalised by weight sum)."""
    err = (pred.float() - tgt.float()) ** 2
    if weights is None:
        return err.mean(dim=tuple(range(1, err.dim())))
    w = weights.float().expand_as(err)
    return (err * w).sum(dim=tuple(range(1, err.dim()))) / w.sum(dim=tuple(range(1, err.dim()))).clamp_min(1e-8)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """A generator that depends only on (seed, step, micro-batch), so a resumed run draws the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2 ** 63))


# ---------------------------------------------------------------------------------------------- helpers
def output_path(options: TrainOptions, name: str) -> Path:
    """Where a run's final file goes: the output option, else <log_dir>/<name>.pt."""
    return Path(options.output) if options.output else Path(options.log_dir) / f"{name}.pt"


def replaces_other_file(output, source=None) -> bool:
    """Whether saving to `output` would replace an existing file other than `source`, the file being continued."""
    if not os.path.exists(output):
        return False
    return source is None or not os.path.exists(source) or not os.path.samefile(output, source)


def build_optimizer(name: str, params, opts: TrainOptions, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in the options, with the configured decay and betas."""
    params = list(params)
    if name in ("AdamW", "Adam"):
        cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
        return cls(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps, weight_decay=opts.weight_decay,
                   **fast_adam(params))
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=opts.beta1, weight_decay=opts.weight_decay)
    if name == "AdamW8bit":
        bnb = _optional_package("bitsandbytes", "AdamW8bit", "bitsandbytes` (and a CUDA GPU")
        return bnb.optim.AdamW8bit(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                                   weight_decay=opts.weight_decay)
    if name == "Lion":
        lion = _optional_package("lion_pytorch", "Lion", "lion-pytorch")
        return lion.Lion(params, lr=lr, betas=(opts.beta1, opts.beta2), weight_decay=opts.weight_decay)
    if name == "Prodigy":  # learning_rate is Prodigy's multiplier of its own estimate: 1.0 is the usual value
        prodigy = _optional_package("prodigyopt", "Prodigy", "prodigyopt")
        return prodigy.Prodigy(params, lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                               weight_decay=opts.weight_decay)
    if name == "Adafactor":  # the trainer's schedule sets the rate, so Adafactor's own relative step is off
        optimization = _optional_package("transformers.optimization", "Adafactor", "transformers")
        return optimization.Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                                      weight_decay=opts.weight_decay)
    raise HypernetError(f"optimizer: unknown {name!r}")


def fast_adam(params) -> dict:
    """Adam's fastest implementation for these parameters: fused (one kernel for all of them; 4x the default loop on
    a CPU for the default file) where torch has it for their device and dtype, else foreach."""
    kinds = {(p.device.type, p.dtype) for p in params}
    fused_ok = all(device in ("cpu", "cuda") and dtype in (torch.float32, torch.float16, torch.bfloat16)
                   for device, dtype in kinds)
    return {"fused": True} if fused_ok and kinds else {"foreach": True}


def _optional_package(module: str, optimizer: str, pip_name: str):
    """The module an optimizer comes from, or a HypernetError saying what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HypernetError(f"optimizer: {optimizer} needs `pip install {pip_name}`; install it or choose "
                            "AdamW") from None


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision option on a device (None = full precision)."""
    if device.type != "cuda" or precision == "no":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def compute_dtype(host) -> torch.dtype:
    """The dtype the host's UNet computes in: the autocast dtype of its precision context, else its own dtype."""
    kind = torch.device(host.device).type
    with host_precision(host):
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    return host.dtype


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device`; to CUDA from pinned memory without waiting, since a pageable copy there makes the
    host wait for the GPU to finish all its queued work."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def host_precision(host):
    """The host's own precision context (the webui's devices.autocast()), or none for a host without one."""
    precision = getattr(host, "precision", None)
    return precision() if precision is not None else contextlib.nullcontext()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    """What a run produced and why it ended."""

    output: Optional[str]
    run_dir: str
    start_step: int
    step: int
    stopped: str                   # "completed", "interrupted", "already-done"
    last_loss: Optional[float] = None
    saved: list = field(default_factory=list)
    previews: list = field(default_factory=list)
    skipped_steps: int = 0
    overflow_steps: int = 0   # steps skipped because float16 loss scaling overflowed (the scale was lowered)
    val_losses: list = field(default_factory=list)   # (step, validation loss) at each evaluation
    validation_seconds: float = 0.0                  # time spent scoring the validation draws
    probes: list = field(default_factory=list)       # (step, prompt kept, style strength) at each measure
    probe_seconds: float = 0.0                       # time spent measuring them (probe.py)
    suggested: Optional[str] = None                  # the suggested copy (probe.suggest), when any was measured
    suggested_step: Optional[int] = None
    seconds: float = 0.0                             # the whole loop, validation and measures included
    timing: Optional[timing.Timing] = None           # where those seconds went, by phase (timing.py)


@dataclass
class Progress:
    """One progress report, passed to on_progress after every optimizer step."""

    step: int
    total: int
    loss: float
    learn_rate: float
    epoch: int
    epoch_step: int
    it_per_s: float
    preview: Optional[str] = None  # the last preview image of this step
    saved: Optional[str] = None
    val_loss: Optional[float] = None
    previews: list = field(default_factory=list)  # every preview image of this step (a prompts file makes several)
    prompt_kept: Optional[float] = None           # measured at this step (step 0, saves and the end)
    style: Optional[float] = None


class _StopOnSigint:
    """Ctrl-C asks the loop to stop after the current step; a second Ctrl-C aborts at once."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        log.warning("stopping after this step and saving (press Ctrl-C again to abort without saving)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run of one hypernetwork on one host; call run() once."""

    def __init__(self, host, options: TrainOptions, hypernetwork: Union[Hypernetwork, str, os.PathLike, None] = None,
                 create: Optional[CreateOptions] = None, *, stop: Optional[threading.Event] = None,
                 on_progress: Optional[Callable[[Progress], None]] = None, show_progress: bool = True,
                 name: Optional[str] = None, group: Optional[distributed.Group] = None, profile: bool = False):
        """`group`: this process among data-parallel processes (default: the initialised torch.distributed
        group, else a single process). `profile`: keep every step's phases (profile.csv in the run folder) and the
        peak memory while training (a process of its own: on a CPU this resets the process's peak RSS)."""
        self.host = host
        self.opts = options
        self.group = group or distributed.current()
        self._stop_all = False  # data-parallel: a stop any process asked for, agreed at the last all-reduce
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.show_progress = show_progress
        self.source_path: Optional[str] = None
        self.probe_prompts = self._probe_prompts()  # a bad file is refused before any model work
        self.hn = self._resolve_hypernetwork(hypernetwork, create, name)
        self.name = self.hn.name
        resume = self._trainer_state()
        self.seed = options.seed if options.seed >= 0 else int(resume.get("seed", secrets.randbelow(2 ** 31)))
        self.seed = self.group.broadcast_int(self.seed, self._reduce_device())  # process 0's pick for all
        self.batches_consumed = int(resume.get("batches_consumed", 0)) if resume.get("seed") == self.seed else 0
        self.start_step = self.hn.step
        self.lr_schedule = schedule.parse_schedule(options.learning_rate, options.steps, "learning_rate")
        self.clip_schedule = (schedule.parse_schedule(options.clip_grad_value, options.steps, "clip_grad_value")
                              if options.clip_grad_mode != "disabled" else None)
        today = _dt.date.today().isoformat()
        self.run_dir = Path(options.log_dir) / today / self.name
        self.output = output_path(options, self.name)
        self._cond_cache: "dict[str, object]" = {}
        self.optimizer = self.scaler = self.batches = self.board = self.wandb = self.bar = None
        self._copies: list = []           # numbered copies this run wrote, oldest first (keep_last_copies prunes)
        self._host_restore: dict = {}     # host attributes the options changed, with their values before
        self.sample_prompts = self._sample_prompts()
        self._loss_rows: list = []
        self._plot_points: tuple = ([], [])
        self.val_losses: list = []   # (step, validation loss) at each evaluation; the TrainResult holds this list
        self._csv_checked = False
        self.validation: list = []   # the fixed validation draws (validation.Draw), built in _prepare
        self.probes: list = []       # (step, prompt kept, style strength) at each measure; the TrainResult's list
        self._val_predictions: Optional[tuple] = None   # (step, predictions) of the last validation
        self._probe_setup: Optional[tuple] = None       # (draws, conditioning, base predictions), made once
        self._handle = None          # the attachment training runs under (the measure sets its strength)
        self._copy_steps: dict = {}  # numbered copy path -> step
        self._suggested_step: Optional[int] = None   # known at the end; loss.png marks it
        self.notes: list = []   # what the user should know about the data, one line each (skipped images...)
        self._overflowed = 0.0  # the loss scale of the last step if float16 scaling overflowed there, else 0
        self.profile = profile
        self.timer = timing.PhaseTimer(self.host.device, keep_rows=profile, measure_rss=profile)
        self._text_fixed = False   # every prompt the run can draw is in _cond_cache (cache_text_embeddings)
        self._probe_cond = None    # the probe prompts' conditioning, encoded before step 0
        self._released = None      # brings back what _release_models freed (the text encoder, the VAE)
        self._settings_file: Optional[Path] = None
        self._alphas: Optional[torch.Tensor] = None  # the noise schedule on the host's device (_alphas_cumprod)

    # ------------------------------------------------------------------------------------------ setup
    def _resolve_hypernetwork(self, hypernetwork, create, name) -> Hypernetwork:
        if isinstance(hypernetwork, Hypernetwork):
            hn = hypernetwork
            self.source_path = hn.filename
        elif hypernetwork is not None:
            self.source_path = str(hypernetwork)
            hn = load(hypernetwork, with_optimizer=True)
        else:
            config = create or CreateOptions(name=name or "hypernetwork", dims=self.host.model_dims())
            from ..network import from_options
            hn = from_options(config, seed=self.opts.seed if self.opts.seed >= 0 else None)
        if name:
            hn.name = name
        return hn

    def _trainer_state(self) -> dict:
        state = self.hn.optimizer_extra.get(TRAINER_STATE_KEY)
        return state if isinstance(state, dict) else {}

    def _check_compatibility(self) -> None:
        report = self.hn.compatibility(self.host.unet)
        if not report.applies:
            raise HypernetError(f"hypernetwork {self.name!r} has widths {report.dims}, but this model's attention "
                                f"reads {report.model_cross_dims + report.model_self_dims}; create it with "
                                f"--dims {','.join(map(str, self.host.model_dims()))}")
        if report.warning:
            log.warning(report.warning)

    def _freeze_host(self) -> None:
        for module in self.host.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def _reduce_device(self) -> torch.device:
        """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
        device = torch.device(self.host.device)
        return device if device.type == "cuda" else torch.device("cpu")

    def _build_dataset(self):
        from .data import TrainingSet
        # With a latent cache, process 0 fills it first and the others read it: one writer of files.
        order = self.group.writer_first() if self.opts.latent_cache_dir else contextlib.nullcontext()
        with order:
            return TrainingSet(self.opts, self.host.encode_images, self.host.vae_key, self.name,
                               generator=torch.Generator().manual_seed(self.seed))

    def _lr(self, step: int) -> float:
        """The learning rate at a step: a pure function of the step, so a resumed run repeats it."""
        o = self.opts
        return schedule.learning_rate(self.lr_schedule, step, o.steps, o.lr_warmup_steps, o.lr_shape, o.lr_cycles,
                                      o.lr_power)

    def _sample_prompts(self) -> list:
        """The previews a prompts file asks for (read now, before any model work), else []."""
        if not self.opts.preview_prompts_file:
            return []
        from .sample_prompts import read_prompts
        return read_prompts(self.opts.preview_prompts_file)

    def _probe_prompts(self) -> list:
        """The probe prompts for 'prompt kept': the file's (read now, before any model work), else the shipped ones."""
        if not self.opts.probe_draws:
            return []
        if self.opts.probe_prompts_file:
            return probe.read_probe_prompts(self.opts.probe_prompts_file)
        return list(probe.SHIPPED_PROMPTS)

    def _configure_host(self) -> None:
        """Apply the options that change the host (clip skip, VAE); _restore_host undoes them."""
        o = self.opts
        if o.clip_skip:
            if not hasattr(self.host, "clip_skip"):
                raise HypernetError(f"clip_skip: {type(self.host).__name__} cannot skip text encoder layers; "
                                    "leave it at 0")
            self._set_host("clip_skip", o.clip_skip)
        if o.vae:
            if not hasattr(self.host, "use_vae"):
                raise HypernetError(f"vae: {type(self.host).__name__} takes its VAE from its own settings (in the "
                                    "webui: SD VAE); leave this empty")
            self._host_restore["vae"] = self.host.use_vae(o.vae)

    def _set_host(self, name: str, value) -> None:
        self._host_restore.setdefault(name, getattr(self.host, name))
        setattr(self.host, name, value)

    def _restore_host(self) -> None:
        for name, value in self._host_restore.items():
            if name == "vae":
                self.host.use_vae(value)
            else:
                setattr(self.host, name, value)
        self._host_restore = {}

    def _build_optimizer(self) -> torch.optim.Optimizer:
        lr = self._lr(self.start_step)
        optimizer = build_optimizer(self.opts.optimizer, self.hn.parameters(), self.opts, lr)
        state = self.hn.optimizer_state_dict
        if state is not None:
            if self.hn.optimizer_name == self.opts.optimizer:
                try:
                    optimizer.load_state_dict(state)
                    log.info("resuming with the saved %s optimizer state", self.opts.optimizer)
                except (ValueError, KeyError, RuntimeError) as exc:
                    log.warning("saved optimizer state does not fit (%s); starting the optimizer fresh", exc)
            else:
                log.warning("saved optimizer state is for %s, training with %s: starting the optimizer fresh",
                            self.hn.optimizer_name, self.opts.optimizer)
        return optimizer

    # ------------------------------------------------------------------------------------------ one step
    def _conditioning(self, prompts):
        """The prompts' text conditioning, from the cache when the options keep prompts fixed."""
        cacheable = not self.opts.shuffle_tags and self.opts.tag_dropout == 0  # caption dropout only adds ""
        if not cacheable:
            return self.host.encode_prompts(prompts)
        self._encode_missing(prompts)
        return _stack([self._cond_cache[p] for p in prompts])

    def _encode_missing(self, prompts) -> None:
        """Encode the prompts not in the cache; beyond TEXT_CACHE_BYTES the oldest go, unless all were
        precomputed."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cond_cache]
        if not missing:
            return
        encoded = self.host.encode_prompts(missing)
        for i, text in enumerate(missing):
            self._cond_cache[text] = _index(encoded, i)
        if self._text_fixed:
            return
        while len(self._cond_cache) > max(1, TEXT_CACHE_BYTES // _nbytes(next(iter(self._cond_cache.values())))):
            self._cond_cache.pop(next(iter(self._cond_cache)))

    def _precompute_text(self, dataset) -> None:
        """Encode before step 0 every prompt the captions and template can make (when tags are neither shuffled nor
        dropped), as kohya's cached text encoder outputs, and the probe prompts: no step encodes text after."""
        started = time.perf_counter()
        if self.probe_prompts:
            self._probe_cond = self.host.encode_prompts(self.probe_prompts + [""])
        prompts = dataset.possible_prompts() if self.opts.cache_text_embeddings else None
        if prompts is not None:  # the validation draws' too: images set aside are no longer in the set
            prompts = list(dict.fromkeys(prompts + [draw.prompt for draw in self.validation]))
        if prompts:
            self._encode_missing(prompts[:16])
            size = _nbytes(next(iter(self._cond_cache.values())))
            if size * len(prompts) <= TEXT_CACHE_BYTES:
                self._text_fixed = True
                for i in range(16, len(prompts), 16):
                    self._encode_missing(prompts[i:i + 16])
            else:
                log.info("%d prompts would take %.1f GiB of text embeddings; encoding them as batches draw them",
                         len(prompts), size * len(prompts) / 2 ** 30)
        self.timer.setup["text encoding"] = time.perf_counter() - started

    def _release_models(self) -> None:
        """Free the VAE (every latent is encoded) and the text encoder (every prompt is) while no preview needs
        them: the host moves them off the GPU, or drops them from a pipeline that is this run's alone."""
        release = getattr(self.host, "release", None)
        o = self.opts
        previews = bool(o.preview_every) and o.steps // o.preview_every > self.start_step // o.preview_every
        if release is None or previews:
            return
        self._released = release(vae=True, text=self._text_fixed)

    def _bring_back(self) -> None:
        """The host's text encoder and VAE back where they were before _release_models."""
        if self._released is not None:
            self._released()
            self._released = None

    def _micro_loss(self, batch, step: int, micro: int) -> torch.Tensor:
        """One micro-batch's loss (this process's share of it), each part timed as its phase."""
        device = self.host.device
        with self.timer.phase("data"):
            gen = step_generator(self.seed, step, micro)
            x0 = batch.latents.to(device, torch.float32)
            noise = to_device(sample_noise(tuple(x0.shape), self.opts.noise_offset, gen), device)
            t = to_device(sample_timesteps(x0.shape[0], self.opts.timestep_min, self._timestep_high(), gen), device)
            # dropout draws from the global generator: seed it per step so a resumed run repeats it
            dropout_seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
            # The draws above cover the global batch, so every layout of processes sees the same numbers; each
            # process then keeps its own shard.
            part = self.group.shard(len(x0))
            if part.start == part.stop:
                return torch.zeros((), device=device)
            weights = None if batch.weights is None else batch.weights[part]
        with self.timer.phase("text"):
            cond = self._conditioning(batch.prompts[part])
        with self.timer.phase("forward"):
            weighted = self._loss(x0[part], noise[part], t[part], cond, weights, dropout_seed)
            if not self.group.active:
                return weighted.mean()
            return weighted.sum() / len(batch)  # this shard's part of the global mean: the all-reduce sums the parts

    def _alphas_cumprod(self) -> torch.Tensor:
        """The host's noise schedule on its device, copied there once (a copy per step would wait for the GPU)."""
        device = torch.device(self.host.device)
        if self._alphas is None or self._alphas.device != device:
            self._alphas = self.host.alphas_cumprod.to(device)
        return self._alphas

    def _timestep_high(self) -> int:
        return min(self.opts.timestep_max, len(self.host.alphas_cumprod))

    def _loss(self, x0, noise, t, cond, weights, dropout_seed: int, predictions: Optional[list] = None):
        """Per-sample weighted MSE of the UNet's prediction on x0 noised to timesteps t under the text conditioning
        `cond` (training and validation); `predictions`, when given, receives the clean latent the prediction
        implies (for the style strength)."""
        device = self.host.device
        alpha_bar = self._alphas_cumprod()[t]
        x_t = noisy_latents(x0, noise, alpha_bar)
        if self.opts.gradient_checkpointing and torch.is_grad_enabled():
            x_t.requires_grad_(True)  # reentrant checkpoints pass gradients only when an input needs them
        pred = self._predict(x_t, t, cond, dropout_seed)
        if predictions is not None:
            # in float64 on the CPU: some devices (MPS) have no float64, and the figures are ratios of small changes
            cpu = [v.detach().cpu().double() for v in (pred, x_t, alpha_bar)]
            predictions.append(predicted_x0(self.host.prediction_type, *cpu))
        losses = per_sample_loss(pred, target(self.host.prediction_type, x0, noise, alpha_bar),
                                 None if weights is None else weights.to(device))
        return losses * min_snr_weight(alpha_bar, self.opts.min_snr_gamma, self.host.prediction_type)

    def _predict(self, x_t, t, cond, dropout_seed: int) -> torch.Tensor:
        """The UNet's prediction in the training precision, its dropout drawn from `dropout_seed` alone."""
        device = self.host.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._autocast():
            torch.manual_seed(dropout_seed)
            return self.host.predict(x_t.to(device), t.to(device), cond)

    # ------------------------------------------------------------------------------------------ validation
    def val_points(self) -> list:
        """(step, validation loss) at each evaluation so far, the start included."""
        return list(self.val_losses)

    def _build_validation(self, dataset) -> list:
        """The fixed validation draws: from images set aside, or from the training images when none are."""
        o = self.opts
        if not o.validation_every and not self.probe_prompts:
            return []
        rng = random.Random(self.seed)
        items = dataset.hold_out(o.validation_images, rng) if o.validation_images else dataset.items
        examples = [(*dataset.example(item, rng), item.path) for item in items]
        return validation.make_draws(examples, o.validation_draws, self.seed, o.timestep_min, self._timestep_high(),
                                     o.noise_offset)

    def _validate(self, step: int, result: TrainResult) -> Optional[float]:
        """Mean loss over the fixed draws with dropout off and no gradients; recorded for the CSV and plot."""
        if not self.validation or not self.opts.validation_every:
            return None
        started = time.perf_counter()
        with self._evaluating():
            value, predictions = self._score_validation()
        self._val_predictions = (step, predictions)
        result.validation_seconds += time.perf_counter() - started
        self.val_losses.append((step, value))
        if self.board is not None:
            self.board.add_scalar("Loss/validation", value, step)
        if self.wandb is not None:
            self.wandb.log({"val_loss": value}, step=step)
        return value

    def _score_validation(self) -> tuple:
        """(mean loss, the clean latents the predictions imply, in draw order) over the fixed validation draws; callers
        turn dropout and gradients off (_evaluating)."""
        device, total, predictions = self.host.device, 0.0, []
        for chunk in validation.batches(self.validation, self.opts.batch_size):
            x0 = torch.stack([d.latent for d in chunk]).to(device, torch.float32)
            noise = torch.stack([d.noise for d in chunk]).to(device, torch.float32)
            t = torch.tensor([d.timestep for d in chunk], device=device)
            weights = None if chunk[0].weight is None else torch.stack([d.weight for d in chunk])
            cond = self._conditioning([d.prompt for d in chunk])
            total += float(self._loss(x0, noise, t, cond, weights, 0, predictions).sum())
        return total / len(self.validation), torch.cat(predictions)

    @contextlib.contextmanager
    def _evaluating(self):
        """Dropout off and no gradients, training mode back afterwards."""
        self.hn.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.hn.train()

    @contextlib.contextmanager
    def _strength(self, strength: float):
        """The training attachment at `strength` for a while (0: the model without the hypernetwork)."""
        before = self._handle.stack
        self._handle.set_stack([(self.hn, strength)])
        try:
            yield
        finally:
            self._handle.set_stack(before)

    # ------------------------------------------------------------------------------------------ the measure
    def probe_points(self) -> list:
        """(step, prompt kept, style strength) at each measure so far, the start included."""
        return list(self.probes)

    def _probe(self, step: int, result: TrainResult) -> Optional[tuple]:
        """Prompt kept and style strength of the hypernetwork now (probe.py); recorded for the CSV and plot."""
        if not self.probe_prompts or not self.validation or not self.group.writer:
            return None
        started = time.perf_counter()
        if self._probe_setup is None:
            self._probe_setup = self._make_probe_setup()
        draws, cond, (base_prompts, base_captions) = self._probe_setup
        with self._evaluating():
            prompts = self._probe_predictions(draws, cond)
            captions = self._caption_predictions(step)
        figures = (probe.prompt_kept(prompts, base_prompts, len(draws.t)),
                   probe.style_strength(captions, base_captions))
        result.probe_seconds += time.perf_counter() - started
        self.probes.append((step, *figures))
        self._log_figures({"prompt_kept": figures[0], "style": figures[1]}, step)
        return figures

    def _log_figures(self, figures: dict, step: int) -> None:
        """Measures to TensorBoard (under Probe/) and W&B."""
        if self.board is not None:
            for name, value in figures.items():
                self.board.add_scalar(f"Probe/{name}", value, step)
        if self.wandb is not None:
            self.wandb.log(figures, step=step)

    def _make_probe_setup(self) -> tuple:
        """The probe draws, the probe prompts' conditioning (the empty prompt last) and the predictions without the
        hypernetwork, which training never changes: made once per run."""
        o = self.opts
        draws = probe.make_probe_draws(self.validation[0].latent.shape, o.probe_draws, self.seed, o.timestep_min,
                                       self._timestep_high(), self.host.alphas_cumprod)
        cond = self._probe_cond  # encoded before step 0 (_precompute_text), while the text encoder was there
        with self._evaluating(), self._strength(0.0):
            base = (self._probe_predictions(draws, cond), self._score_validation()[1])
        return draws, cond, base

    def _probe_predictions(self, draws, cond) -> torch.Tensor:
        """Every probe prompt's prediction at every probe draw, batched."""
        predict = lambda x_t, t, c: self._predict(x_t, t, c, 0)  # noqa: E731
        return probe.probe_predictions(predict, draws, cond, len(self.probe_prompts) + 1, self._probe_chunk())

    def _probe_chunk(self) -> int:
        """Probe predictions per UNet call: twice a training batch, which fits where training's backward fits, and
        at least 8, since on small models the cost is mostly per call."""
        return max(2 * self.opts.batch_size, 8)

    def _caption_predictions(self, step: int) -> torch.Tensor:
        """The validation draws' predictions at this step: the validation's own when it ran here."""
        if self._val_predictions is not None and self._val_predictions[0] == step:
            return self._val_predictions[1]
        return self._score_validation()[1]

    def _grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """Dynamic loss scaling when the UNet computes in float16 (a half model, or fp16 autocast), whose small
        gradients would otherwise flush to zero; None otherwise."""
        dtypes = (autocast_dtype(self.opts.mixed_precision, self.host.device), compute_dtype(self.host))
        if torch.float16 not in dtypes:
            return None
        return torch.amp.GradScaler(torch.device(self.host.device).type)

    def _autocast(self):
        dtype = autocast_dtype(self.opts.mixed_precision, self.host.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.host.device.type, dtype=dtype)

    def _grad_sum(self) -> torch.Tensor:
        """The sum of every gradient, on the device: finite exactly when they all are (a float32 sum overflows only
        past gradients of 1e31, as unusable as inf), in one pass and one value to read back."""
        grads = [p.grad for p in self.hn.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.host.device)
        return torch.stack([g.float().sum() for g in grads]).sum()

    def _clip(self, step: int) -> None:
        if self.clip_schedule is None:
            return
        value = schedule.value_at(self.clip_schedule, step)
        if self.opts.clip_grad_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.hn.parameters(), value)
        else:
            torch.nn.utils.clip_grad_value_(self.hn.parameters(), value)

    # ------------------------------------------------------------------------------------------ outputs
    def _write_settings(self) -> None:
        if not self.group.writer:
            return
        data = {"options": self.opts.to_dict(), "hypernetwork": self.hn.config.to_dict(), "seed": self.seed,
                "processes": self.group.world_size,
                "start_step": self.start_step, "source": self.source_path, "output": str(self.output),
                "model": self.host.identity(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "torch": torch.__version__}
        from ..version import __version__
        data["hypernet"] = __version__
        self._settings_file = self._settings_path()
        atomic_write(self._settings_file, json.dumps(data, indent=2, default=str).encode())

    def _settings_path(self) -> Path:
        """settings.json for a run's first start; a resumed run in the same folder keeps it and writes its own."""
        path = self.run_dir / "settings.json"
        n = 1
        while path.exists():
            path = self.run_dir / f"settings-resumed-at-{self.start_step}{'' if n == 1 else f'-{n}'}.json"
            n += 1
        return path

    def _append_csv(self, row) -> None:
        if not self.group.writer:
            return
        path = self.run_dir / "hypernetwork_loss.csv"
        if not self._csv_checked and path.exists():
            _upgrade_csv(path)
        self._csv_checked = True
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(CSV_COLUMNS)
            writer.writerow(row)

    def _stamp_metadata(self) -> None:
        ident = self.host.identity()
        self.hn.sd_checkpoint = ident.get("unet_hash")
        self.hn.sd_checkpoint_name = ident.get("name")

    def _tensorboard(self):
        if not self.opts.tensorboard or not self.group.writer:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise HypernetError("tensorboard: logging to TensorBoard needs `pip install tensorboard`; "
                                "install it or turn the option off") from None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _wandb(self):
        """A Weights & Biases run when the option is on (one per training run, in the run folder)."""
        if not self.opts.wandb or not self.group.writer:
            return None
        try:
            import wandb
        except ImportError:
            raise HypernetError("wandb: logging to Weights & Biases needs `pip install wandb` (and `wandb login`, "
                                "or WANDB_MODE=offline); install it or turn the option off") from None
        return wandb.init(project=self.opts.wandb_project or "hypernet", name=f"{self.name}-{self.start_step}",
                          dir=str(self.run_dir), config={**self.opts.to_dict(), "seed": self.seed,
                                                         "hypernetwork": self.hn.config.to_dict()})

    def _log_step(self, step: int, loss: float, lr: float) -> None:
        if self.board is not None:
            self.board.add_scalar("Loss/train", loss, step)
            self.board.add_scalar("Learn rate/train", lr, step)
        if self.wandb is not None:
            self.wandb.log({"loss": loss, "learn_rate": lr}, step=step)

    def _log_previews(self, step: int, paths: list) -> None:
        if self.wandb is not None and paths:
            import wandb
            self.wandb.log({"preview": [wandb.Image(p, caption=Path(p).stem) for p in paths]}, step=step)

    def _save(self, path: Path) -> str:
        if not self.group.writer:
            return str(path)  # process 0 writes the same weights
        self._stamp_metadata()
        dtype = DTYPES[self.opts.save_precision]
        written = self.hn.save(path, dtype=dtype)
        if self.opts.save_optimizer_state:
            save_optimizer(written, self.opts.optimizer, self.optimizer.state_dict(),
                           {TRAINER_STATE_KEY: {"seed": self.seed, "batches_consumed": self.batches_consumed}})
        return written

    def _save_copy(self, step: int) -> str:
        if not self.group.writer:
            return str(self.run_dir / "hypernetworks" / f"{self.name}-{step}.pt")
        path = self._save(self.run_dir / "hypernetworks" / f"{self.name}-{step}.pt")
        self._copy_steps[path] = step
        self._draw_loss()
        self._copies.append(path)
        self._prune_copies()
        return path

    def _prune_copies(self) -> None:
        """Delete this run's older numbered copies (and their .optim) beyond keep_last_copies; never another file."""
        keep = self.opts.keep_last_copies
        if not keep:
            return
        from ..fileformat.files import optim_path
        final = os.path.abspath(self.output)
        while len(self._copies) > keep:
            old = self._copies.pop(0)
            if os.path.abspath(old) == final:
                continue
            for path in (old, optim_path(old)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def _preview(self, step: int, batch) -> Optional[str]:
        """The step's preview image (the last one when a prompts file asks for several)."""
        paths = self._previews(step, batch)
        return paths[-1] if paths else None

    def _previews(self, step: int, batch) -> list:
        """Render the step's previews: one from the preview options, or one per line of the prompts file."""
        from .sample_prompts import SamplePrompt
        if not self.group.writer:
            return []
        o = self.opts
        # A line without --d keeps one seed for the whole run, so its previews show only what training changed.
        if self.sample_prompts:
            wanted = [(p, self.run_dir / "images" / f"{self.name}-{step}-{k}.png",
                       random.Random(self.seed * 7919 + k).randrange(2 ** 31))
                      for k, p in enumerate(self.sample_prompts)]
        else:
            prompt = o.preview_prompt or (batch.prompts[0] if batch.prompts else self.name)
            wanted = [(SamplePrompt(prompt), self.run_dir / "images" / f"{self.name}-{step}.png",
                       random.Random(self.seed + step).randrange(2 ** 31))]
        state = _rng_state()
        self.hn.eval()
        try:
            return [self._render(*args) for args in wanted]
        finally:
            self.hn.train()
            _set_rng_state(state)

    def _render(self, p, path: Path, random_seed: int) -> str:
        """One preview image and its .txt, each setting from the prompt line or else the preview options; a seed
        below 0 becomes `random_seed`."""
        o = self.opts
        pick = lambda own, default: default if own is None else own  # noqa: E731
        seed = pick(p.seed, o.preview_seed)
        seed = random_seed if seed < 0 else seed
        sampler = pick(p.sampler, o.preview_sampler)
        extra = {"sampler_name": sampler} if sampler else {}
        negative = pick(p.negative, o.preview_negative_prompt)
        with torch.no_grad():
            image = self.host.sample(p.prompt, negative, pick(p.steps, o.preview_steps),
                                     pick(p.cfg_scale, o.preview_cfg_scale), seed,
                                     pick(p.width, o.preview_width or o.width),
                                     pick(p.height, o.preview_height or o.height), **extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        text = f"{p.prompt}\n" + (f"negative: {negative}\n" if negative else "") + f"seed: {seed}\n"
        path.with_suffix(".txt").write_text(text)
        return str(path)

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        opts = self.opts
        if self.start_step >= opts.steps:
            log.warning("%s is already at step %d (target %d); nothing to train", self.name, self.start_step,
                        opts.steps)
            return TrainResult(None, str(self.run_dir), self.start_step, self.start_step, "already-done")
        try:
            self._prepare()
        except BaseException:
            self._bring_back()
            self._restore_host()
            raise
        result = TrainResult(None, str(self.run_dir), self.start_step, self.start_step, "completed",
                             val_losses=self.val_losses, probes=self.probes)
        handle = self._handle = attach(self.host.unet, [(self.hn, 1.0)], warn=False)
        try:
            with _StopOnSigint(self.stop):
                self._loop(result)
        except BaseException as exc:
            handle.remove()
            self._close()
            rescue = self._rescue(result.step, exc) if self.group.writer else ""
            if isinstance(exc, HypernetError):
                raise HypernetError(f"{exc}{rescue}") from None
            raise
        handle.remove()
        result.timing = self.timer.finish()
        result.seconds = result.timing.seconds
        try:  # the loggers stay open until the suggested copy, which needs the last files, is logged
            self._save_files(result)
        finally:
            self._close()
        self._draw_loss()
        self._write_summary(result)
        log.info("%s", result.timing.line())
        return result

    def _write_summary(self, result: TrainResult) -> None:
        """summary.json beside the run's settings (what it did and where its time went); profile.csv with --profile,
        one row of phase seconds per step."""
        if not self.group.writer:
            return
        name = self._settings_file.name.replace("settings", "summary", 1) if self._settings_file else "summary.json"
        data = {"stopped": result.stopped, "start_step": result.start_step, "step": result.step,
                "output": result.output, "last_loss": result.last_loss, "skipped_steps": result.skipped_steps,
                "overflow_steps": result.overflow_steps, "device": str(self.host.device),
                "timing": result.timing.to_dict()}
        atomic_write(self.run_dir / name, json.dumps(data, indent=2).encode())
        if self.profile and result.timing.rows:
            atomic_write(self.run_dir / name.replace("summary", "profile", 1).replace(".json", ".csv"),
                         result.timing.rows_csv().encode())

    def _save_files(self, result: TrainResult) -> None:
        """The copy at an interrupt, the final file, and the suggested copy among them."""
        if self._stopping() and result.step < self.opts.steps:
            result.stopped = "interrupted"
            # The numbered copy the periodic saves would make, so the log folder holds every stopping point.
            copy = self.run_dir / "hypernetworks" / f"{self.name}-{result.step}.pt"
            if result.step > self.start_step and str(copy) not in result.saved:
                result.saved.append(self._save_copy(result.step))
        result.output = self._save(self.output)
        result.suggested, result.suggested_step = self.suggested(result)
        self._suggested_step = result.suggested_step
        if result.suggested_step is not None:
            self._log_figures({"suggested_step": result.suggested_step}, result.step)

    def suggested(self, result: TrainResult) -> tuple:
        """(path, step) of the suggested copy among this run's copies and its final file, by probe.suggest;
        (None, None) when none was measured."""
        figures = {step: (kept, style) for step, kept, style in self.probes}
        files = [(path, self._copy_steps.get(path)) for path in result.saved]
        if result.output and result.step not in {step for _, step in files}:
            files.append((result.output, result.step))
        rows = [{"prompt_kept": figures[step][0], "style": figures[step][1]} if step in figures else {}
                for _, step in files]
        best = probe.suggest(rows, self.opts.prompt_kept_goal)
        return files[best] if best is not None else (None, None)

    def _prepare(self) -> None:
        """Everything before the first step: checks, frozen model, data, folders, optimizer."""
        opts = self.opts
        self._check_compatibility()
        if hasattr(self.host, "check_trainable"):  # a host whose current mode cannot train says so before step 0
            self.host.check_trainable()
        self._configure_host()  # before the dataset: the VAE encodes it
        self._freeze_host()
        started = time.perf_counter()
        dataset = self._build_dataset()
        self.timer.setup["images and latents"] = time.perf_counter() - started
        self.notes = dataset.notes()
        for note in self.notes:
            log.warning("%s: %s", opts.data, note)
        self.validation = self._build_validation(dataset)  # also where the style strength is measured
        self._precompute_text(dataset)
        self._release_models()
        log.info("training %s on %d images from %s", self.name, len(dataset), opts.data)
        if self.group.writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        self.board = self._tensorboard()
        self.wandb = self._wandb()
        # Master weights: the hypernetwork, its gradients and the optimizer state stay float32 whatever the UNet's
        # dtype; the hooks cast the context to them and back.
        self.hn.to(self.host.device, torch.float32)
        for param in self.hn.parameters():  # a new file's random start, process 0's everywhere (as DDP does)
            self.group.broadcast(param.data)
        self.hn.requires_grad_(True)
        self.hn.train()
        self.optimizer = self._build_optimizer()
        self.scaler = self._grad_scaler()
        if opts.gradient_checkpointing and hasattr(self.host, "enable_gradient_checkpointing"):
            self.host.enable_gradient_checkpointing()
        # Every process draws the same global batches (batch_size per process) and trains on its shard of each.
        batches = dataset.batches(opts.batch_size * self.group.world_size, random.Random(self.seed))
        for _ in range(self.batches_consumed):
            next(batches)
        self.batches = _Staged(batches, torch.device(self.host.device))
        self.bar = self._progress_bar()

    def _loop(self, result: TrainResult) -> None:
        opts = self.opts
        step, nan_run, window = self.start_step, 0, []
        started = time.perf_counter()
        self.timer.start()
        with self.timer.phase("validation"):
            self._validate(step, result)  # where the curves start: the file as it came in
            self._probe(step, result)
        while step < opts.steps and not self._stopping():
            lr = self._lr(step)
            self.timer.begin_step(step + 1)
            loss, batch = self._accumulate(step, lr)
            if loss is not None:
                with self.timer.phase("optimizer"):
                    self._apply_update(step)
            else:
                self.timer.abandon_step()
            if loss is None and self._overflowed:
                result.overflow_steps += 1
                log.info("step %d: float16 gradients overflowed at loss scale %g; step skipped, scale lowered",
                         step + 1, self._overflowed)
                continue
            if loss is None:
                nan_run += 1
                result.skipped_steps += 1
                log.warning("step %d: non-finite loss or gradients, step skipped (%d in a row)", step + 1, nan_run)
                if nan_run >= opts.max_nan_steps:
                    raise HypernetError(
                        f"training stopped: {nan_run} steps in a row had NaN/inf loss or gradients at step {step}. "
                        f"Lower the learning rate ({opts.learning_rate}), enable gradient clipping, or use fp32/bf16 "
                        "precision")
                continue
            nan_run = 0
            step += 1
            self.hn.step = result.step = step
            result.last_loss = loss
            window.append(loss)
            with self.timer.phase("logging"):
                self._plot_points[0].append(step)
                self._plot_points[1].append(loss)
                self._log_step(step, loss, lr)
                report = Progress(step, opts.steps, loss, lr, batch.epoch, batch.epoch_step,
                                  (step - self.start_step) / max(time.perf_counter() - started, 1e-9))
            saving = bool(opts.save_every) and step % opts.save_every == 0
            last = step == opts.steps or self._stopping()
            validating = bool(opts.validation_every) and (step % opts.validation_every == 0 or saving or last)
            with self.timer.phase("validation", occasional=validating or saving or last):
                if validating:
                    report.val_loss = self._validate(step, result)
                if saving or last:
                    report.prompt_kept, report.style = self._probe(step, result) or (None, None)
            with self.timer.phase("logging", occasional=saving):
                measured = report.val_loss is not None or report.prompt_kept is not None
                if measured or (opts.log_every and (step % opts.log_every == 0 or last)):
                    figures = [_csv_number(report.val_loss), _csv_number(report.prompt_kept),
                               _csv_number(report.style)]
                    self._append_csv((step, batch.epoch, batch.epoch_step, f"{sum(window) / len(window):.7f}",
                                      f"{lr:.10g}", *figures))
                    window = []
                if saving:
                    report.saved = self._save_copy(step)
                    result.saved.append(report.saved)
            if opts.preview_every and step % opts.preview_every == 0:
                with self.timer.phase("validation", occasional=True):
                    report.previews = self._previews(step, batch)
                report.preview = report.previews[-1] if report.previews else None
                result.previews.extend(report.previews)
                self._log_previews(step, report.previews)
            with self.timer.phase("logging"):
                self._report(report)
            self.timer.end_step()

    def _accumulate(self, step: int, lr: float):
        """Forward and backward over the accumulated micro-batches: (mean loss or None if non-finite, last batch)."""
        opts = self.opts
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses, batch = [], None
        self._overflowed = 0.0
        for micro in range(opts.gradient_accumulation):
            with self.timer.phase("data"):
                batch = next(self.batches)
                self.batches_consumed += 1
            loss = self._micro_loss(batch, step, micro)
            if loss.requires_grad:  # an empty shard has nothing to differentiate
                with self.timer.phase("backward"):
                    scaled = loss / opts.gradient_accumulation
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            losses.append(loss.detach().float())
        with self.timer.phase("data"):
            self.batches.stage()  # read and copy the next batch while the device still works on this one
        with self.timer.phase("optimizer"):
            return self._checked_loss(torch.stack(losses).mean()), batch

    def _checked_loss(self, loss: torch.Tensor) -> Optional[float]:
        """The step's mean loss when it and every (unscaled, summed across processes) gradient are finite, else None
        with the gradients dropped; one read from the device per step, after the next batch is on its way."""
        total = self._all_reduce(float(loss)) if self.group.active else None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        value, grads = (float(v) for v in torch.stack([loss, self._grad_sum()]).tolist())
        value = value if total is None else total  # a non-finite loss anywhere makes the sum non-finite
        if math.isfinite(value) and math.isfinite(grads):
            return value
        # Non-finite gradients from a finite loss under float16 scaling: an overflow, which lowers the scale.
        self._overflowed = self._overflow_scale() if math.isfinite(value) else 0.0
        self._drop_gradients()
        return None

    def _overflow_scale(self) -> float:
        """The loss scale when non-finite gradients came from float16 loss scaling (a finite loss, a scale with room
        to come down), else 0: a true NaN, which the NaN guard counts."""
        if self.scaler is None:
            return 0.0
        scale = float(self.scaler.get_scale())
        return scale if scale > 1.0 else 0.0

    def _all_reduce(self, total: float) -> float:
        """Sum the gradients, losses and stop requests of every process in one flat buffer (the gradients still
        scaled, so every process's GradScaler sees the same numbers); the summed loss, non-finite when any was."""
        params = list(self.hn.parameters())
        flags = torch.tensor([total, 1.0 if self.stop.is_set() else 0.0])
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [flags.to(params[0].device)])
        flat = self.group.all_reduce_sum(flat.to(self._reduce_device()))
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.device, p.dtype).clone()
            offset += p.numel()
        total, stops = (float(v) for v in flat[offset:])
        self._stop_all = self._stop_all or stops > 0
        return total

    def _stopping(self) -> bool:
        """Whether to stop after this step; data-parallel processes stop together, at the step all agreed on."""
        return self._stop_all if self.group.active else self.stop.is_set()

    def _drop_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # also resets the unscale bookkeeping for the next step

    def _apply_update(self, step: int) -> None:
        """Clip and step on gradients known finite (already unscaled), then let the scaler raise its scale."""
        self._clip(step)
        self.optimizer.step()  # not scaler.step, which would read the inf check back once more
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _draw_loss(self) -> None:
        if self._plot_points[0] and self.group.writer:
            from .plot import draw_loss
            draw_loss(*self._plot_points, self.run_dir / "loss.png", title=f"{self.name} loss",
                      validation=tuple(zip(*self.val_losses)), probes=self.probes, suggested=self._suggested_step)

    def _close(self) -> None:
        """Undo what _prepare changed: progress bar, TensorBoard, checkpointing, training mode."""
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.bar is not None:
            self.bar.close()
        self._finish_modules()

    def _finish_modules(self) -> None:
        self._bring_back()
        self._restore_host()
        if self.opts.gradient_checkpointing and hasattr(self.host, "disable_gradient_checkpointing"):
            self.host.disable_gradient_checkpointing()
        if hasattr(self.host, "close"):  # a host that changed the model for training undoes it
            self.host.close()
        self.hn.eval()
        self.hn.requires_grad_(False)

    def _rescue(self, step: int, exc: BaseException) -> str:
        """Save what a failed run had, never over the file it started from; returns a note for the message."""
        if step <= self.start_step or not self.hn.is_finite():
            return "; nothing was saved, the starting file is unchanged"
        path = self.run_dir / "hypernetworks" / f"{self.name}-{step}-unfinished.pt"
        try:
            written = self._save(path)
        except Exception as save_exc:  # the original error matters more than a failed rescue
            log.error("could not save the unfinished run: %s", save_exc)
            return ""
        log.warning("saved the unfinished run to %s", written)
        return f"; the weights at step {step} were saved to {written}"

    def _progress_bar(self):
        if not self.show_progress or not self.group.writer:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.opts.steps, initial=self.start_step, desc=f"training {self.name}", unit="step",
                    dynamic_ncols=True)

    def _report(self, report: Progress) -> None:
        if self.bar is not None:
            self.bar.update(1)
            extra = {"val": f"{self.val_losses[-1][1]:.4f}"} if self.val_losses else {}
            self.bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.learn_rate:.2e}", **extra)
        if self.on_progress is not None:
            self.on_progress(report)


def _upgrade_csv(path: Path) -> None:
    """Give a loss CSV from an older run (the webui's five columns) our header, so a resumed run appends to it."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) == CSV_COLUMNS:
        return
    width = len(CSV_COLUMNS)
    body = [CSV_COLUMNS] + [r + [""] * (width - len(r)) for r in rows[1:]]
    text = io.StringIO()
    csv.writer(text).writerows(body)
    atomic_write(path, text.getvalue().encode())


def _csv_number(value: Optional[float]) -> str:
    """A measured figure for the CSV, empty where it was not measured."""
    return "" if value is None else f"{value:.7f}"


class _Staged:
    """The batch stream one batch ahead: stage() reads the next batch and starts its latents' copy to the device
    (from pinned memory, not waiting, on CUDA) while the device still works on the step before."""

    def __init__(self, batches, device: torch.device):
        self.batches = batches
        self.device = device
        self.staged = None

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.staged if self.staged is not None else self._copy(next(self.batches))
        self.staged = None
        return batch

    def stage(self) -> None:
        """Read the next batch now."""
        if self.staged is None:
            self.staged = self._copy(next(self.batches))

    def _copy(self, batch):
        if self.device.type != "cuda":
            return batch
        weights = None if batch.weights is None else to_device(batch.weights, self.device)
        return dataclasses.replace(batch, latents=to_device(batch.latents, self.device), weights=weights)


def _nbytes(cond) -> int:
    """The bytes of one prompt's conditioning (a tensor, or SDXL's dict of them)."""
    parts = cond.values() if isinstance(cond, dict) else [cond]
    return sum(t.numel() * t.element_size() for t in parts)


def _index(cond, i: int):
    if isinstance(cond, dict):
        return {k: v[i] for k, v in cond.items()}
    return cond[i]


def _stack(items):
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return torch.stack(items)


def train(host, options: TrainOptions, hypernetwork=None, create: Optional[CreateOptions] = None, **kwargs) -> TrainResult:
    """Train a hypernetwork on a host; see Trainer for the keyword arguments."""
    return Trainer(host, options, hypernetwork, create, **kwargs).run()
