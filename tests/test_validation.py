"""Validation loss: fixed draws across steps and resumes, held-out images, the CSV/plot/status, no effect on training."""
import csv
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

import hypernet
from hypernet.tiny import model as tiny
from hypernet.config import CreateOptions
from hypernet.errors import ConfigError
from hypernet.hosts.diffusers import DiffusersHost
from hypernet.train.plot import VALIDATION_COLOUR, render_loss
from hypernet.train.run_folder import CSV_COLUMNS, _upgrade_csv
from hypernet.train.trainer import Trainer, train
from hypernet.train.validation import make_draws, pick_cycle, spread_timesteps
from test_train import make_images, opts, same_state, state


@pytest.fixture(scope="module")
def host():
    return DiffusersHost(tiny.pipeline("sd1", seed=1))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("vdata"), n=4)


def draws_of(trainer):
    return [(d.prompt, d.timestep, d.source, d.latent, d.noise) for d in trainer.validation]


def same_draws(a, b):
    return len(a) == len(b) and all(x[:3] == y[:3] and torch.equal(x[3], y[3]) and torch.equal(x[4], y[4])
                                    for x, y in zip(a, b))


def prepared(host, data_dir, tmp_path, hn, **kw):
    trainer = Trainer(host, opts(data_dir, tmp_path, **kw), hn, show_progress=False)
    trainer._prepare()
    trainer._close()
    return trainer


# ---------------------------------------------------------------------------------------------- pure parts
def test_timesteps_cover_the_range_evenly():
    assert spread_timesteps(4, 0, 1000) == [125, 375, 625, 875]
    assert spread_timesteps(3, 200, 500) == [250, 350, 450]


def test_every_image_is_used_before_any_repeats():
    picks = pick_cycle(3, 7, random.Random(0))
    assert sorted(picks[:3]) == [0, 1, 2] and sorted(picks[3:6]) == [0, 1, 2] and len(picks) == 7


def test_draws_depend_only_on_the_seed():
    examples = [(torch.randn(4, 8, 8), f"p{i}", None, f"f{i}") for i in range(3)]
    a, b = make_draws(examples, 6, 5, 0, 1000, 0.0), make_draws(examples, 6, 5, 0, 1000, 0.0)
    c = make_draws(examples, 6, 6, 0, 1000, 0.0)
    assert all(torch.equal(x.noise, y.noise) and x.timestep == y.timestep and x.prompt == y.prompt
               for x, y in zip(a, b))
    assert not all(torch.equal(x.noise, y.noise) for x, y in zip(a, c))
    assert sorted(d.timestep for d in a) == spread_timesteps(6, 0, 1000)


# ---------------------------------------------------------------------------------------------- in the trainer
def test_draws_are_fixed_across_steps_and_resumes(host, data_dir, tmp_path):
    create = CreateOptions(name="val", dims=host.model_dims())
    kw = dict(batch_size=2, latent_sampling="random", flip=True, shuffle_tags=True, validation_every=2,
              save_every=2, steps=4)
    straight = train(host, opts(data_dir, tmp_path / "a", **kw), create=create, show_progress=False)
    assert [s for s, _ in straight.val_losses] == [0, 2, 4]
    assert straight.val_losses[0][1] != straight.val_losses[-1][1]  # the curve moves with the hypernetwork
    copy = Path(straight.run_dir) / "hypernetworks" / "val-2.pt"
    first = prepared(host, data_dir, tmp_path / "b", hypernet.load(copy, with_optimizer=True), **kw)
    again = prepared(host, data_dir, tmp_path / "c", hypernet.load(copy, with_optimizer=True), **kw)
    assert same_draws(draws_of(first), draws_of(again))                  # same seed, same draws
    resumed = train(host, opts(data_dir, tmp_path / "d", **kw), str(copy), show_progress=False)
    assert resumed.val_losses[0] == straight.val_losses[1]              # step 2 scored the same after a resume
    assert resumed.val_losses[-1] == straight.val_losses[-1]            # and step 4, since training resumes exactly
    # scoring twice changes nothing: no randomness left in a validation pass
    trainer = prepared(host, data_dir, tmp_path / "e", hypernet.load(straight.output), **kw)
    with hypernet.attach(host.unet, [(trainer.hn, 1.0)], warn=False):
        result = type(straight)(None, "", 0, 0, "completed")
        assert trainer._validate(4, result) == trainer._validate(4, result) == straight.val_losses[-1][1]


def test_validation_does_not_change_training(host, data_dir, tmp_path):
    create = CreateOptions(name="same", dims=host.model_dims(), dropout_structure=[0, 0.1, 0])
    kw = dict(steps=3, batch_size=2, flip=True, shuffle_tags=True)
    scored = train(host, opts(data_dir, tmp_path / "a", validation_every=1, **kw), create=create, show_progress=False)
    plain = train(host, opts(data_dir, tmp_path / "b", validation_every=0, **kw), create=create, show_progress=False)
    assert len(scored.val_losses) == 4 and plain.val_losses == []
    assert same_state(state(hypernet.load(scored.output)), state(hypernet.load(plain.output)))


def test_held_out_images_never_train(host, data_dir, tmp_path):
    hn = hypernet.create(dims=host.model_dims(), name="held", seed=0)
    trainer = prepared(host, data_dir, tmp_path, hn, validation_images=1, validation_draws=3)
    held = {d.source for d in trainer.validation}
    assert len(held) == 1 and len(trainer.validation) == 3
    trained = {p for _ in range(8) for p in next(trainer.batches).paths}
    assert trained and not trained & held and len(trained) == 3
    same = prepared(host, data_dir, tmp_path / "again", hn, validation_images=1, validation_draws=3)
    assert {d.source for d in same.validation} == held                  # the same image is set aside each time


def test_setting_aside_every_image_is_refused(host, data_dir, tmp_path):
    hn = hypernet.create(dims=host.model_dims(), name="all", seed=0)
    with pytest.raises(ConfigError, match="validation_images.*leave none of the 4"):
        prepared(host, data_dir, tmp_path, hn, validation_images=4)


# ---------------------------------------------------------------------------------------------- where it shows
def test_csv_plot_and_cli_report_it(host, data_dir, tmp_path):
    result = train(host, opts(data_dir, tmp_path, steps=4, validation_every=2, log_every=3),
                   create=CreateOptions(name="shown", dims=host.model_dims()), show_progress=False)
    run = Path(result.run_dir)
    rows = list(csv.DictReader(open(run / "hypernetwork_loss.csv")))
    assert [(r["step"], r["val_loss"] != "") for r in rows] == [("2", True), ("3", False), ("4", True)]
    assert float(rows[-1]["val_loss"]) == pytest.approx(result.val_losses[-1][1], rel=1e-6)
    picture = Image.open(run / "loss.png").convert("RGB")
    assert VALIDATION_COLOUR in {c for _, c in picture.getcolors(1 << 16)}


def test_plot_without_validation_has_no_orange():
    picture = render_loss([1, 2, 3], [0.3, 0.2, 0.25])
    with_val = render_loss([1, 2, 3], [0.3, 0.2, 0.25], validation=([0, 2], [0.31, 0.22]))
    assert VALIDATION_COLOUR not in {c for _, c in picture.getcolors(1 << 16)}
    assert VALIDATION_COLOUR in {c for _, c in with_val.getcolors(1 << 16)}


def test_old_csv_gets_the_new_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "hypernetwork_loss.csv"
    path.write_text("step,epoch,epoch_step,loss,learn_rate\n1,0,0,0.5,1e-05\n")
    _upgrade_csv(path)
    rows = list(csv.reader(open(path)))
    assert rows == [list(CSV_COLUMNS), ["1", "0", "0", "0.5", "1e-05", "", "", ""]]


def test_draws_carry_alpha_weights_like_training_batches(host, data_dir, tmp_path):
    hn = hypernet.create(dims=host.model_dims(), name="alpha", seed=0)
    with pytest.warns(Warning, match="no image has transparency"):
        trainer = prepared(host, data_dir, tmp_path, hn, use_alpha_weight=True, validation_draws=2)
    assert len(trainer.validation) == 2
    for d in trainer.validation:
        assert d.weight.shape == (1,) + tuple(d.latent.shape[-2:]) and torch.equal(d.weight, torch.ones_like(d.weight))
    plain = prepared(host, data_dir, tmp_path / "plain", hn, validation_draws=2)
    assert all(d.weight is None for d in plain.validation)
