"""The training loop: a frozen model, a trainable hypernetwork, MSE on the noise (or v) prediction.

The Trainer sets a run up and steps it; the objective's math is in objective.py, the run folder's files in
run_folder.py, previews in previews.py, the checked optimizer step in update.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch

from ..attach import Attachment, attach
from ..config import CreateOptions, TrainOptions
from ..errors import HypernetError
from ..fileformat.files import load
from ..network import Hypernetwork, from_options
from . import distributed, optimizers, precision, probe, schedule, timing, validation
from .host_changes import HostChanges
from .objective import (min_snr_weight, noisy_latents, per_sample_loss, predicted_x0, sample_noise, sample_timesteps,
                        step_generator, target)
from .previews import Previews
from .results import Progress, TrainResult
from .run_folder import TRAINER_STATE_KEY, RunFolder
from .staging import Staged, to_device
from .text_cache import TextCache
from .update import Updater

if TYPE_CHECKING:  # the contract only: the trainer runs on whatever host it is given
    from ..hosts.protocol import Conditioning, Host

log = logging.getLogger("hypernet")


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

    def __init__(self, host: Host, options: TrainOptions,
                 hypernetwork: Union[Hypernetwork, str, os.PathLike, None] = None,
                 create: Optional[CreateOptions] = None, *, stop: Optional[threading.Event] = None,
                 on_progress: Optional[Callable[[Progress], None]] = None, show_progress: bool = True,
                 name: Optional[str] = None, group: Optional[distributed.Group] = None, profile: bool = False):
        """`group`: this process among data-parallel processes (default: the initialised torch.distributed
        group, else a single process). `profile`: keep every step's phases (profile.csv in the run folder) and the
        peak memory while training (a process of its own: on a CPU this resets the process's peak RSS)."""
        self.host = host
        self.opts = options
        self.group = group or distributed.current()
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.show_progress = show_progress
        self.source_path: Optional[str] = None
        self.probe_prompts = self._probe_prompts()  # a bad file is refused before any model work
        self.hn = self._resolve_hypernetwork(hypernetwork, create, name)
        self.name = self.hn.name
        resume = self._trainer_state()
        self.seed = options.seed if options.seed >= 0 else int(resume.get("seed", secrets.randbelow(2 ** 31)))
        self.seed = self.group.broadcast_int(self.seed, distributed.collective_device(host.device))  # process 0's
        self.batches_consumed = int(resume.get("batches_consumed", 0)) if resume.get("seed") == self.seed else 0
        self.start_step = self.hn.step
        self.lr_schedule = schedule.parse_schedule(options.learning_rate, options.steps, "learning_rate")
        self.clip_schedule = (schedule.parse_schedule(options.clip_grad_value, options.steps, "clip_grad_value")
                              if options.clip_grad_mode != "disabled" else None)
        self.folder = RunFolder(options, self.hn, start_step=self.start_step, writer=self.group.writer,
                                identity=host.identity)
        self.run_dir, self.output = self.folder.dir, self.folder.output
        self.text = TextCache(host, cacheable=not options.shuffle_tags and options.tag_dropout == 0)
        self.previews = Previews(options, host, self.hn, seed=self.seed, folder=self.run_dir, writer=self.group.writer)
        self.optimizer: torch.optim.Optimizer   # the optimizer, its checked step and the batches: made in _prepare
        self.updater: Updater
        self.batches: Staged
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.bar = None
        self.host_changes = HostChanges(host, options)
        self.validation: list = []   # the fixed validation draws (validation.Draw), built in _prepare
        self._val_predictions: Optional[tuple] = None   # (step, predictions) of the last validation
        self._probe_setup: Optional[tuple] = None       # (draws, conditioning, base predictions), made once
        self._handle: Attachment     # the attachment training runs under, made by run() (the measure sets its strength)
        self._window: list = []      # the step losses since the last CSV row, which holds their mean
        self.notes: list = []   # what the user should know about the data, one line each (skipped images...)
        self.profile = profile
        self.timer = timing.PhaseTimer(self.host.device, keep_rows=profile, measure_rss=profile)
        self._probe_cond: Optional[Conditioning] = None    # the probe prompts' conditioning, encoded before step 0
        self._alphas: Optional[torch.Tensor] = None  # the noise schedule on the host's device (_alphas_cumprod)

    # ------------------------------------------------------------------------------------------ setup
    def _resolve_hypernetwork(self, hypernetwork, create, name) -> Hypernetwork:
        """The hypernetwork to train: the one given, the file named (with its optimizer state), or a new one."""
        if isinstance(hypernetwork, Hypernetwork):
            hn = hypernetwork
            self.source_path = hn.filename
        elif hypernetwork is not None:
            self.source_path = str(hypernetwork)
            hn = load(hypernetwork, with_optimizer=True)
        else:
            config = create or CreateOptions(name=name or "hypernetwork", dims=self.host.model_dims())
            hn = from_options(config, seed=self.opts.seed if self.opts.seed >= 0 else None)
        if name:
            hn.name = name
        return hn

    def _trainer_state(self) -> dict:
        """What the file's last run saved for a resume (seed, batches consumed), or {}."""
        state = self.hn.optimizer_extra.get(TRAINER_STATE_KEY)
        return state if isinstance(state, dict) else {}

    def _build_dataset(self):
        """The training set: images, captions and their latents (data.py)."""
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

    def _probe_prompts(self) -> list:
        """The probe prompts for 'prompt kept': the file's (read now, before any model work), else the shipped ones."""
        if not self.opts.probe_draws:
            return []
        if self.opts.probe_prompts_file:
            return probe.read_probe_prompts(self.opts.probe_prompts_file)
        return list(probe.SHIPPED_PROMPTS)

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
            self.text.precompute(prompts)
        self.timer.setup["text encoding"] = time.perf_counter() - started

    def _release_models(self) -> None:
        """Free the VAE and, when every prompt is encoded, the text encoder while no preview needs them."""
        if not self.previews.any_after(self.start_step):
            self.host_changes.release(text=self.text.fixed)

    def _grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """The run's float16 loss scaler, or None (precision.grad_scaler)."""
        return precision.grad_scaler(self.opts.mixed_precision, self.host)

    def _resume_state(self) -> dict:
        """What a saved file carries beside its optimizer state so that a resumed run draws what this one would."""
        return {"seed": self.seed, "batches_consumed": self.batches_consumed}

    def _prepare(self) -> None:
        """Everything before the first step: checks, frozen model, data, folders, optimizer."""
        opts = self.opts
        self.host_changes.check(self.hn)
        self.host_changes.apply()  # before the dataset: the VAE encodes it
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
        self.folder.open(self.seed, self.source_path, self.group.world_size)
        # Master weights: the hypernetwork, its gradients and the optimizer state stay float32 whatever the UNet's
        # dtype; the hooks cast the context to them and back.
        self.hn.to(self.host.device, torch.float32)
        for param in self.hn.parameters():  # a new file's random start, process 0's everywhere (as DDP does)
            self.group.broadcast(param.data)
        self.hn.requires_grad_(True)
        self.hn.train()
        self.optimizer = optimizers.for_hypernetwork(self.hn, opts, self._lr(self.start_step))
        self.scaler = self._grad_scaler()
        self.updater = Updater(list(self.hn.parameters()), self.optimizer, self.scaler, self.group, self.stop,
                               self.clip_schedule, opts.clip_grad_mode, self.host.device)
        self.host_changes.checkpoint()
        # Every process draws the same global batches (batch_size per process) and trains on its shard of each.
        batches = dataset.batches(opts.batch_size * self.group.world_size, random.Random(self.seed))
        for _ in range(self.batches_consumed):
            next(batches)
        self.batches = Staged(batches, torch.device(self.host.device))
        self.bar = self._progress_bar()

    # ------------------------------------------------------------------------------------------ one step
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
            cond = self.text.conditioning(batch.prompts[part])
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
        """The end (exclusive) of the trained timesteps: timestep_max, at most the schedule's length."""
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
        with torch.random.fork_rng(devices=devices), precision.autocast(self.opts.mixed_precision, device):
            torch.manual_seed(dropout_seed)
            return self.host.predict(x_t.to(device), t.to(device), cond)

    def _accumulate(self, step: int, lr: float):
        """Forward and backward over the accumulated micro-batches: (mean loss or None if non-finite, last batch)."""
        opts = self.opts
        self.updater.set_learning_rate(lr)
        losses, batch = [], None
        for micro in range(opts.gradient_accumulation):
            with self.timer.phase("data"):
                batch = next(self.batches)
                self.batches_consumed += 1
            loss = self._micro_loss(batch, step, micro)
            if loss.requires_grad:  # an empty shard has nothing to differentiate
                with self.timer.phase("backward"):
                    self.updater.backward(loss / opts.gradient_accumulation)
            losses.append(loss.detach().float())
        with self.timer.phase("data"):
            self.batches.stage()  # read and copy the next batch while the device still works on this one
        with self.timer.phase("optimizer"):
            return self.updater.checked_loss(torch.stack(losses).mean()), batch

    # ------------------------------------------------------------------------------------------ validation
    def val_points(self) -> list:
        """(step, validation loss) at each evaluation so far, the start included."""
        return list(self.folder.val_losses)

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
        self.folder.log_validation(step, value)
        return value

    def _score_validation(self) -> tuple:
        """(mean loss, the clean latents the predictions imply, in draw order) over the fixed validation draws; callers
        turn dropout and gradients off (_evaluating)."""
        device, total = self.host.device, 0.0
        predictions: list = []
        for chunk in validation.batches(self.validation, self.opts.batch_size):
            x0 = torch.stack([d.latent for d in chunk]).to(device, torch.float32)
            noise = torch.stack([d.noise for d in chunk]).to(device, torch.float32)
            t = torch.tensor([d.timestep for d in chunk], device=device)
            weights = None if chunk[0].weight is None else torch.stack([d.weight for d in chunk])
            cond = self.text.conditioning([d.prompt for d in chunk])
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
        return list(self.folder.probes)

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
        self.folder.log_probe(step, *figures)
        return figures

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

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train from the file's step to the last (or a stop) and save; what the run produced."""
        opts = self.opts
        if self.start_step >= opts.steps:
            log.warning("%s is already at step %d (target %d); nothing to train", self.name, self.start_step,
                        opts.steps)
            return TrainResult(None, str(self.run_dir), self.start_step, self.start_step, "already-done")
        try:
            self._prepare()
        except BaseException:
            self.host_changes.undo()
            raise
        result = TrainResult(None, str(self.run_dir), self.start_step, self.start_step, "completed",
                             val_losses=self.folder.val_losses, probes=self.folder.probes)
        handle = self._handle = attach(self.host.unet, [(self.hn, 1.0)], warn=False)
        try:
            with _StopOnSigint(self.stop):
                self._loop(result)
        except BaseException as exc:
            handle.remove()
            self._close()
            rescue = self.folder.rescue(result.step, self.optimizer, self._resume_state())
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
        self.folder.draw_loss()
        self.folder.write_summary(result, str(self.host.device), self.profile)
        log.info("%s", result.timing.line())
        return result

    def _save_files(self, result: TrainResult) -> None:
        """The copy at an interrupt, the final file, and the suggested copy among them."""
        if self.updater.stopping() and result.step < self.opts.steps:
            result.stopped = "interrupted"
            # The numbered copy the periodic saves would make, so the log folder holds every stopping point.
            if result.step > self.start_step and str(self.folder.copy_path(result.step)) not in result.saved:
                result.saved.append(self.folder.save_copy(result.step, self.optimizer, self._resume_state()))
        result.output = self.folder.save(self.output, self.optimizer, self._resume_state())
        result.suggested, result.suggested_step = self.folder.suggest(result.saved, result.output, result.step)

    def _loop(self, result: TrainResult) -> None:
        """Steps until the last or a stop: each one's checked update, then what the options do after it."""
        step, nan_run = self.start_step, 0
        started = time.perf_counter()
        self.timer.start()
        with self.timer.phase("validation"):
            self._validate(step, result)  # where the curves start: the file as it came in
            self._probe(step, result)
        while step < self.opts.steps and not self.updater.stopping():
            lr = self._lr(step)
            self.timer.begin_step(step + 1)
            loss, batch = self._accumulate(step, lr)
            if loss is None:
                self.timer.abandon_step()
                nan_run = self._skipped(step, nan_run, result)
                continue
            with self.timer.phase("optimizer"):
                self.updater.apply(step)
            nan_run = 0
            step += 1
            self.hn.step = result.step = step
            result.last_loss = loss
            self._window.append(loss)
            with self.timer.phase("logging"):
                self.folder.log_step(step, loss, lr)
                report = Progress(step, self.opts.steps, loss, lr, batch.epoch, batch.epoch_step,
                                  (step - self.start_step) / max(time.perf_counter() - started, 1e-9))
            self._after_step(report, result)
            if self.previews.due(step):
                self._render_previews(report, batch, result)
            with self.timer.phase("logging"):
                self._report(report)
            self.timer.end_step()

    def _skipped(self, step: int, nan_run: int, result: TrainResult) -> int:
        """Count a step the guard skipped: a float16 overflow (the scale was lowered), else a non-finite loss or
        gradient, which ends the run after max_nan_steps in a row; the non-finite steps in a row now."""
        if self.updater.overflowed:
            result.overflow_steps += 1
            log.info("step %d: float16 gradients overflowed at loss scale %g; step skipped, scale lowered",
                     step + 1, self.updater.overflowed)
            return nan_run
        nan_run += 1
        result.skipped_steps += 1
        log.warning("step %d: non-finite loss or gradients, step skipped (%d in a row)", step + 1, nan_run)
        if nan_run >= self.opts.max_nan_steps:
            raise HypernetError(
                f"training stopped: {nan_run} steps in a row had NaN/inf loss or gradients at step {step}. "
                f"Lower the learning rate ({self.opts.learning_rate}), enable gradient clipping, or use fp32/bf16 "
                "precision")
        return nan_run

    def _after_step(self, report: Progress, result: TrainResult) -> None:
        """The step's measures, CSV row and numbered copy, each when the options ask for it here."""
        opts, step = self.opts, report.step
        saving = bool(opts.save_every) and step % opts.save_every == 0
        last = step == opts.steps or self.updater.stopping()
        validating = bool(opts.validation_every) and (step % opts.validation_every == 0 or saving or last)
        with self.timer.phase("validation", occasional=validating or saving or last):
            if validating:
                report.val_loss = self._validate(step, result)
            if saving or last:
                report.prompt_kept, report.style = self._probe(step, result) or (None, None)
        with self.timer.phase("logging", occasional=saving):
            measured = report.val_loss is not None or report.prompt_kept is not None
            if measured or (opts.log_every and (step % opts.log_every == 0 or last)):
                self.folder.append_csv(step, report.epoch, report.epoch_step, sum(self._window) / len(self._window),
                                       report.learn_rate, report.val_loss, report.prompt_kept, report.style)
                self._window = []
            if saving:
                report.saved = self.folder.save_copy(step, self.optimizer, self._resume_state())
                result.saved.append(report.saved)

    def _render_previews(self, report: Progress, batch, result: TrainResult) -> None:
        """The step's previews, into the report, the result and W&B."""
        with self.timer.phase("validation", occasional=True):
            report.previews = self.previews.render(report.step, batch)
        report.preview = report.previews[-1] if report.previews else None
        result.previews.extend(report.previews)
        self.folder.log_previews(report.step, report.previews)

    def _close(self) -> None:
        """Undo what _prepare changed: loggers, progress bar, the host's changes, training mode."""
        self.folder.close()
        if self.bar is not None:
            self.bar.close()
        self.host_changes.finish()
        self.hn.eval()
        self.hn.requires_grad_(False)

    def _progress_bar(self):
        """A tqdm bar over the steps left (process 0, when asked to show progress)."""
        if not self.show_progress or not self.group.writer:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.opts.steps, initial=self.start_step, desc=f"training {self.name}", unit="step",
                    dynamic_ncols=True)

    def _report(self, report: Progress) -> None:
        """A step's progress to the bar and on_progress."""
        if self.bar is not None:
            self.bar.update(1)
            val_losses = self.folder.val_losses
            extra = {"val": f"{val_losses[-1][1]:.4f}"} if val_losses else {}
            self.bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.learn_rate:.2e}", **extra)
        if self.on_progress is not None:
            self.on_progress(report)


def train(host: Host, options: TrainOptions, hypernetwork=None, create: Optional[CreateOptions] = None,
          **kwargs) -> TrainResult:
    """Train a hypernetwork on a host; see Trainer for the keyword arguments."""
    return Trainer(host, options, hypernetwork, create, **kwargs).run()
