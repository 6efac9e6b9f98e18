"""Where a run's time goes (timing.py), and the overhead the step no longer carries: text encoded once, the text
encoder and VAE freed, one read from the device per step, fused AdamW."""
import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

import hypernet
from hypernet import HypernetError
from hypernet.train import timing
from hypernet.tiny import model as tiny
from hypernet.apps.cli import main
from hypernet.config import TrainOptions
from hypernet.hosts.diffusers import DiffusersHost
from hypernet.train.timing import LABELS, PHASES, PhaseTimer
from hypernet.train.optimizers import build_optimizer
from hypernet.train.trainer import Trainer
from test_train import make_images

TINY = Path(hypernet.__file__).parent / "assets" / "tiny-sd"
LINE = re.compile(r"^time: (\d+) steps in ([\d.]+) s, (\d+) ms/step(?: \(a step without validation or saving "
                  r"(\d+) ms\))? = (.*?)(;|$)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


def opts(data_dir, tmp_path, **kw):
    base = dict(data=str(data_dir), width=64, height=64, steps=6, learning_rate="1e-3", log_dir=str(tmp_path / "logs"),
                save_every=0, preview_every=0, validation_every=0, probe_draws=0, seed=7)
    base.update(kw)
    return TrainOptions(**base)


def parse_line(text: str) -> dict:
    """The printed `time:` line: steps, seconds, ms/step and each phase's ms per step, by label."""
    lines = [line for line in text.splitlines() if line.startswith("time: ")]
    assert len(lines) == 1, text
    match = LINE.match(lines[0])
    assert match, lines[0]
    phases = {}
    for part in match.group(5).split(" + "):
        label, ms, unit = part.rsplit(" ", 2)
        assert unit == "ms", part
        phases[label] = float(ms)
    return {"steps": int(match.group(1)), "seconds": float(match.group(2)), "ms_per_step": float(match.group(3)),
            "plain_ms": None if match.group(4) is None else float(match.group(4)), "phases": phases}


# ---------------------------------------------------------------------------------------------- the timer itself
class FakeClock:
    """Stands in for the time module inside timing.py: seconds pass only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    process_time = perf_counter

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_phases_and_the_rest_sum_to_the_loop_and_occasional_steps_stay_out_of_the_median(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    timer = PhaseTimer("cpu", keep_rows=True)
    timer.start()
    for step in range(1, 6):
        timer.begin_step(step)
        with timer.phase("forward"):
            clock.advance(0.01)
        with timer.phase("validation", occasional=step == 3):
            clock.advance(0.05 if step == 3 else 0)
        clock.advance(0.002)  # the loop's own bookkeeping: the rest
        timer.end_step()
    result = timer.finish()
    assert result.steps == 5 and set(result.phases) == set(PHASES)
    assert math.isclose(result.seconds, 0.11, abs_tol=1e-9)
    assert math.isclose(sum(result.phases.values()), result.seconds, rel_tol=1e-9)
    assert math.isclose(result.phases["forward"], 0.05, abs_tol=1e-9)
    assert math.isclose(result.phases["validation"], 0.05, abs_tol=1e-9)
    assert math.isclose(result.phases["rest"], 0.01, abs_tol=1e-9)
    # step 3 validated: not a plain step; the other four took 12 ms each
    assert len(result.step_seconds) == 4 and all(math.isclose(s, 0.012, abs_tol=1e-9) for s in result.step_seconds)
    assert [row["step"] for row in result.rows] == [1, 2, 3, 4, 5]
    per_step = result.per_step()
    assert math.isclose(sum(per_step.values()), 1e3 * result.seconds / 5, rel_tol=1e-9)
    assert math.isclose(result.cpu_seconds, 0.11, abs_tol=1e-9)


# ---------------------------------------------------------------------------------------------- the CLI's line
def test_every_cli_run_prints_its_phases_and_they_sum_to_the_step(data_dir, tmp_path, capsys):
    logs = tmp_path / "logs"
    assert main(["train", "--model", str(TINY), "--data", str(data_dir), "--width", "64", "--height", "64",
                 "--steps", "5", "--save-every", "0", "--preview-every", "0", "--validation-every", "2",
                 "--log-dir", str(logs), "--name", "timed", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    line = parse_line(out)
    assert line["steps"] == 5
    assert list(line["phases"]) == [LABELS[name] for name in PHASES]
    # every phase is a rounded figure: their sum is the step's, within half a millisecond each
    assert abs(sum(line["phases"].values()) - line["ms_per_step"]) <= 0.5 * len(PHASES) + 0.5
    assert line["phases"]["UNet forward"] > 0 and line["phases"]["backward"] > 0
    assert line["phases"]["validation and previews"] > 0  # validation at 0, 2, 4 and the end
    assert "before step 0: images and latents" in out and "profile.csv" not in out
    # validation at 0, 2, 4 and 5: the plain step named first is the median of steps 1 and 3
    assert line["plain_ms"] is not None

    summary = json.loads(next(logs.glob("*/timed/summary.json")).read_text())["timing"]
    assert summary["steps"] == 5 and set(summary["phases"]) == set(PHASES)
    assert math.isclose(sum(summary["phases"].values()), summary["seconds"], rel_tol=1e-6)
    assert abs(summary["seconds"] - line["seconds"]) < 0.06
    assert summary["median_step_ms"] > 0 and 0 < summary["non_unet_share"] < 1
    assert abs(summary["median_step_ms"] - line["plain_ms"]) <= 0.5


def test_profile_writes_each_steps_phases_and_the_peak_memory(data_dir, tmp_path, capsys):
    logs = tmp_path / "logs"
    assert main(["train", "--model", str(TINY), "--data", str(data_dir), "--width", "64", "--height", "64",
                 "--steps", "4", "--save-every", "2", "--preview-every", "0", "--validation-every", "0",
                 "--probe-draws", "0", "--log-dir", str(logs), "--name", "prof", "--seed", "3", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "phase" in out and "median step" in out and "peak memory while training" in out
    run = next(logs.glob("*/prof"))
    with open(run / "profile.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        inside = sum(float(row[name]) for name in PHASES[:-1])
        assert float(row["forward"]) > 0 and float(row["backward"]) > 0
        assert inside <= float(row["step_seconds"]) * 1.001 + 1e-4
    summary = json.loads((run / "summary.json").read_text())["timing"]
    assert summary["peak_bytes"] > 10 * 2 ** 20
    # steps 2 and 4 saved a copy: only 1 and 3 make the median step
    assert sorted(p.name for p in (run / "hypernetworks").glob("*.pt")) == ["prof-2.pt", "prof-4.pt"]
    plain = sorted(float(rows[i]["step_seconds"]) for i in (0, 2))
    assert math.isclose(summary["median_step_ms"], 1e3 * sum(plain) / 2, abs_tol=0.01)  # the CSV keeps µs


# ---------------------------------------------------------------------------------------------- overhead removed
class CountingHost(DiffusersHost):
    """The tiny diffusers host, counting text encodings and noting when each happened."""

    def __init__(self, pipe, **kw):
        super().__init__(pipe, **kw)
        self.encoded = []

    def encode_prompts(self, texts):
        self.encoded.append(len(texts))
        return super().encode_prompts(texts)


def test_fixed_prompts_are_encoded_before_step_0_and_never_during_steps(data_dir, tmp_path):
    host = CountingHost(tiny.pipeline("sd1", seed=1))
    trainer = Trainer(host, opts(data_dir, tmp_path, template="style_filewords", validation_every=3, probe_draws=1),
                      show_progress=False)
    calls_at_start = []
    start = trainer.timer.start
    trainer.timer.start = lambda: (calls_at_start.append(len(host.encoded)), start())
    result = trainer.run()
    assert result.step == 6 and calls_at_start
    lines = len(hypernet.train.data.load_template("style_filewords"))
    assert sum(host.encoded) >= lines * 4  # every template line for every caption, and the probe prompts
    assert len(host.encoded) == calls_at_start[0]  # nothing encoded once the loop began


def test_images_set_aside_for_validation_are_encoded_before_the_encoder_is_freed(data_dir, tmp_path):
    host = CountingHost(tiny.pipeline("sd1", seed=1), disposable=True)
    trainer = Trainer(host, opts(data_dir, tmp_path, validation_images=1, validation_every=2, template="none"),
                      show_progress=False)
    result = trainer.run()
    assert result.step == 6 and len(result.val_losses) == 4  # at 0, 2, 4 and 6, the set-aside image included
    assert next(host.text_encoders[0].parameters()).device.type == "meta"
    assert {d.prompt for d in trainer.validation} <= set(trainer.text.cache)


def test_shuffled_tags_encode_per_step_and_keep_the_encoder(data_dir, tmp_path):
    host = CountingHost(tiny.pipeline("sd1", seed=1), disposable=True)
    trainer = Trainer(host, opts(data_dir, tmp_path, shuffle_tags=True), show_progress=False)
    trainer.run()
    assert len(host.encoded) >= 6  # one per step
    assert next(host.text_encoders[0].parameters()).device.type == "cpu"


def test_a_disposable_pipeline_frees_text_encoder_and_vae_unless_previews_need_them(data_dir, tmp_path):
    host = DiffusersHost(tiny.pipeline("sd1", seed=1), disposable=True)
    result = Trainer(host, opts(data_dir, tmp_path), show_progress=False).run()
    assert result.step == 6
    assert next(host.text_encoders[0].parameters()).device.type == "meta"
    assert next(host.vae.parameters()).device.type == "meta"
    with pytest.raises(HypernetError, match="text encoder was freed"):
        host.encode_prompts(["a red square"])

    kept = DiffusersHost(tiny.pipeline("sd1", seed=1), disposable=True)
    Trainer(kept, opts(data_dir, tmp_path / "p", preview_every=3, preview_steps=2), show_progress=False).run()
    assert next(kept.text_encoders[0].parameters()).device.type == "cpu"

    shared = DiffusersHost(tiny.pipeline("sd1", seed=1))  # a library user's pipeline on a CPU: left alone
    Trainer(shared, opts(data_dir, tmp_path / "s"), show_progress=False).run()
    assert next(shared.vae.parameters()).device.type == "cpu"
    assert shared.encode_prompts(["a red square"]).shape[0] == 1


def test_adam_is_fused_for_float32_weights_on_cpu():
    hn = hypernet.create(dims=[768], seed=0)
    for name in ("AdamW", "Adam"):
        optimizer = build_optimizer(name, hn.parameters(), TrainOptions(), 1e-4)
        assert optimizer.defaults.get("fused") is True, name


def test_a_nan_gradient_with_a_finite_loss_is_still_caught(data_dir, tmp_path):
    """The one read per step is a sum of every gradient: a single NaN anywhere still skips the step."""
    host = DiffusersHost(tiny.pipeline("sd1", seed=1))
    trainer = Trainer(host, opts(data_dir, tmp_path, steps=3, max_nan_steps=10), show_progress=False)
    poisoned = []
    backward = torch.Tensor.backward

    def poison(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        if not poisoned:
            param = next(p for p in trainer.hn.parameters() if p.grad is not None)
            param.grad.view(-1)[-1] = float("nan")
            poisoned.append(True)

    torch.Tensor.backward = poison
    try:
        result = trainer.run()
    finally:
        torch.Tensor.backward = backward
    assert poisoned and result.skipped_steps == 1 and result.step == 3 and trainer.hn.is_finite()
