"""Prompt kept and style strength: fixed draws across resumes, exact at strength 0, no effect on training, where they
show (CSV, plot, status, API, compare rows) and the suggested copy."""
import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

import hypernet
from hypernet.train import probe
from hypernet.config import CreateOptions
from hypernet.errors import ConfigError
from hypernet.train.plot import KEPT_COLOUR, STYLE_COLOUR, render_loss
from hypernet.train.run_folder import CSV_COLUMNS
from hypernet.train.trainer import Trainer, TrainResult, train
from test_train import opts, same_state, state
from test_validation import data_dir, host  # noqa: F401  (the same tiny model and images)


def prepared(host, data_dir, tmp_path, hn, **kw):
    """A trainer ready to measure, under its own attachment at strength 1 (removed by the caller's `finally`)."""
    trainer = Trainer(host, opts(data_dir, tmp_path, **kw), hn, show_progress=False)
    trainer._prepare()
    trainer._handle = hypernet.attach(host.unet, [(trainer.hn, 1.0)], warn=False)
    return trainer


def finish(trainer):
    trainer._handle.remove()
    trainer._close()


# ---------------------------------------------------------------------------------------------- pure parts
def test_probe_draws_depend_only_on_the_seed():
    alphas = torch.linspace(0.99, 0.01, 1000)
    a, b = probe.make_probe_draws((4, 8, 8), 3, 5, 0, 1000, alphas), probe.make_probe_draws((4, 8, 8), 3, 5, 0, 1000,
                                                                                            alphas)
    c = probe.make_probe_draws((4, 8, 8), 3, 6, 0, 1000, alphas)
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.t, b.t) and not torch.equal(a.x_t, c.x_t)
    assert a.t.tolist() == [666, 800, 933]                            # the noisiest 40%, where the prompt decides


def test_figures_are_exact_when_nothing_changes_and_grow_with_the_change():
    base = torch.randn(3 * 2, 4, 8, 8, dtype=torch.float64)           # two prompts and the empty one, two draws
    assert probe.prompt_kept(base.clone(), base, 2) == 1.0 and probe.style_strength(base.clone(), base) == 0.0
    same_picture = base[-2:].repeat(3, 1, 1, 1)                        # every prompt predicts what "" predicts
    assert probe.prompt_kept(same_picture, base, 2) == 0.0
    swapped = torch.cat([base[2:4], base[0:2], base[4:]])              # each prompt draws the other's picture
    assert probe.prompt_kept(swapped, base, 2) < probe.prompt_kept(base + 0.1 * torch.randn_like(base), base, 2)
    assert probe.prompt_kept(base * 0.5, base, 2) == pytest.approx(1.0)  # guidance scales; the direction is kept
    assert probe.style_strength(base * 1.5, base) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["epsilon", "v"])
def test_the_implied_clean_latent_inverts_the_target(kind):
    from hypernet.train.objective import noisy_latents, predicted_x0, target
    x0, noise, a = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64), \
        torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64)
    assert torch.allclose(predicted_x0(kind, target(kind, x0, noise, a), noisy_latents(x0, noise, a), a), x0)


def test_the_suggested_copy_is_the_strongest_style_that_keeps_the_prompt():
    rows = [{"prompt_kept": 0.5, "style": 0.6}, {"prompt_kept": 0.95, "style": 0.3}, {"prompt_kept": 0.92, "style": 0.45},
            {}]
    assert probe.suggest(rows) == 2
    assert probe.suggest(rows, goal=0.99) == 1                        # none keeps 0.99: the one keeping most
    assert probe.suggest([{}, {"prompt_kept": None}]) is None


@pytest.mark.parametrize("content", [None, "# only a comment\n\n", b"\xff\xfe\x00bad"])
def test_a_bad_probe_prompts_file_is_refused_before_any_model_work(tmp_path, content):
    path = tmp_path / "probes.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    options = opts(tmp_path, tmp_path, probe_prompts_file=str(path))
    with pytest.raises(ConfigError, match=r"probe_prompts_file: .*probes\.txt"):
        Trainer(None, options)                                        # no host: nothing touched it before the error


def test_probe_prompts_come_from_the_file_else_the_shipped_list(host, data_dir, tmp_path):
    path = tmp_path / "probes.txt"
    path.write_text("# mine\na red circle\n\na blue square\n")
    assert Trainer(host, opts(data_dir, tmp_path, probe_prompts_file=str(path))).probe_prompts == [
        "a red circle", "a blue square"]
    assert Trainer(host, opts(data_dir, tmp_path)).probe_prompts == list(probe.SHIPPED_PROMPTS)
    assert Trainer(host, opts(data_dir, tmp_path, probe_draws=0)).probe_prompts == []


# ---------------------------------------------------------------------------------------------- in the trainer
def test_strength_zero_measures_exactly_one_and_zero(host, data_dir, tmp_path):
    hn = hypernet.create(dims=host.model_dims(), name="zero", seed=0, weight_init="XavierNormal")
    trainer = prepared(host, data_dir, tmp_path, hn)
    try:
        result = TrainResult(None, "", 0, 0, "completed")
        with trainer._strength(0.0):
            assert trainer._probe(0, result) == (1.0, 0.0)
        kept, style = trainer._probe(0, result)
        assert kept != 1.0 and style > 0                               # at strength 1 the file does something
        assert trainer._probe(0, result) == (kept, style)              # and measuring again draws nothing new
    finally:
        finish(trainer)


def test_measures_are_fixed_across_steps_and_resumes(host, data_dir, tmp_path):
    create = CreateOptions(name="pr", dims=host.model_dims())
    kw = dict(batch_size=2, latent_sampling="random", flip=True, shuffle_tags=True, save_every=2, steps=4)
    straight = train(host, opts(data_dir, tmp_path / "a", **kw), create=create, show_progress=False)
    assert [p[0] for p in straight.probes] == [0, 2, 4]
    assert straight.probes[0][1:] != straight.probes[-1][1:]          # the figures move with the hypernetwork
    copy = Path(straight.run_dir) / "hypernetworks" / "pr-2.pt"
    resumed = train(host, opts(data_dir, tmp_path / "b", **kw), str(copy), show_progress=False)
    assert resumed.probes == straight.probes[1:]                       # step 2 measured the same after a resume


def test_measuring_does_not_change_training(host, data_dir, tmp_path):
    create = CreateOptions(name="same", dims=host.model_dims(), dropout_structure=[0, 0.1, 0])
    kw = dict(steps=3, batch_size=2, flip=True, shuffle_tags=True, save_every=1)
    measured = train(host, opts(data_dir, tmp_path / "a", **kw), create=create, show_progress=False)
    plain = train(host, opts(data_dir, tmp_path / "b", probe_draws=0, **kw), create=create, show_progress=False)
    assert len(measured.probes) == 4 and plain.probes == [] and plain.suggested is None
    assert same_state(state(hypernet.load(measured.output)), state(hypernet.load(plain.output)))
    assert measured.val_losses == plain.val_losses


# ---------------------------------------------------------------------------------------------- where it shows
def test_csv_plot_and_suggested_copy(host, data_dir, tmp_path):
    result = train(host, opts(data_dir, tmp_path, steps=4, save_every=2, log_every=3, prompt_kept_goal=0.5),
                   create=CreateOptions(name="shown", dims=host.model_dims()), show_progress=False)
    run = Path(result.run_dir)
    with open(run / "hypernetwork_loss.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    assert tuple(header) == CSV_COLUMNS and header[5:] == ["val_loss", "prompt_kept", "style"]
    measured = [(int(r[0]), float(r[6]), float(r[7])) for r in rows if r[6]]
    assert [m[0] for m in measured] == [2, 4]
    for (step, kept, style), (p_step, p_kept, p_style) in zip(measured, result.probes[1:]):
        assert step == p_step and kept == pytest.approx(p_kept, abs=1e-7) and style == pytest.approx(p_style, abs=1e-7)
    colours = {c for _, c in Image.open(run / "loss.png").convert("RGB").getcolors(1 << 16)}
    assert {KEPT_COLOUR, STYLE_COLOUR} <= colours
    figures = {step: (kept, style) for step, kept, style in result.probes}
    copies = {2: str(run / "hypernetworks" / "shown-2.pt"), 4: str(run / "hypernetworks" / "shown-4.pt")}
    rows = [{"prompt_kept": figures[s][0], "style": figures[s][1]} for s in copies]
    assert result.suggested == list(copies.values())[probe.suggest(rows, 0.5)]
    assert result.suggested_step in copies
    from hypernet.train import compare
    found = compare.saved_copies([run])
    assert [c.suggested for c in found].count(True) == 1
    assert compare.suggested_copy(run) == result.suggested
    assert all(c.prompt_kept == pytest.approx(figures[c.step][0], abs=1e-7) for c in found)
    assert "prompt kept" in found[0].label and "style" in found[0].label


def test_plot_without_measures_has_no_green():
    plain = render_loss([1, 2, 3], [0.3, 0.2, 0.25])
    measured = render_loss([1, 2, 3], [0.3, 0.2, 0.25], probes=[(0, 1.0, 0.0), (3, 0.8, 0.2)])
    assert KEPT_COLOUR not in {c for _, c in plain.getcolors(1 << 16)}
    assert {KEPT_COLOUR, STYLE_COLOUR} <= {c for _, c in measured.getcolors(1 << 16)}


def test_cli_prints_the_suggested_copy_and_the_cost(host, data_dir, tmp_path, capsys):
    from hypernet.apps.cli import _print_probes
    result = TrainResult("out.pt", "", 0, 4, "completed", probes=[(0, 1.0, 0.0), (2, 0.95, 0.1), (4, 0.7, 0.3)],
                         probe_seconds=1.0, seconds=50.0, suggested="run/x-2.pt", suggested_step=2)
    _print_probes(result, 0.9)
    out = capsys.readouterr().out
    assert "measuring took 2.0% of the run" in out
    assert "suggested copy: run/x-2.pt (step 2: prompt kept 0.95, style 0.100; the strongest style keeping at " \
           "least 0.9 of the prompt)" in out


def test_train_tab_status_shows_the_figures_and_the_suggested_copy():
    from hypernet.ui import tabs
    running = {"job_id": "j", "name": "style", "state": "running", "step": 2, "total": 4, "prompt_kept": 0.93,
               "style": 0.125, "probe_step": 2, "probes": [(0, 1.0, 0.0), (2, 0.93, 0.125)], "losses": [(1, 0.2)]}
    assert "prompt kept 0.93, style 0.125 (step 2)" in tabs.status_html(running)
    done = dict(running, state="completed", output="final.pt", suggested="run/style-2.pt", suggested_step=2)
    assert "Suggested copy: run/style-2.pt (step 2" in tabs.status_html(done)
    picture = tabs.loss_image(running)
    assert KEPT_COLOUR in {c for _, c in picture.getcolors(1 << 16)}


def test_plot_marks_the_suggested_copy():
    unmarked = render_loss([1, 2, 3, 4], [0.3, 0.2, 0.25, 0.2], probes=[(0, 1.0, 0.0), (4, 0.8, 0.2)])
    marked = render_loss([1, 2, 3, 4], [0.3, 0.2, 0.25, 0.2], probes=[(0, 1.0, 0.0), (4, 0.8, 0.2)], suggested=2)
    column = [marked.getpixel((60 + (2 - 0) / 4 * (800 - 20 - 60), y)) for y in range(40, 350)]
    before = [unmarked.getpixel((60 + (2 - 0) / 4 * (800 - 20 - 60), y)) for y in range(40, 350)]
    assert column.count(KEPT_COLOUR) > before.count(KEPT_COLOUR) + 100   # a green line down the plot at step 2
