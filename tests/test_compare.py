"""Comparing saved copies: finding them, the grid's layout, the CLI, the Train tab's panel and keeping a copy."""
import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

import hypernet
from hypernet.train import compare
from hypernet.apps.cli import main
from hypernet.config import CompareOptions, CreateOptions, TrainOptions
from hypernet.tiny.demo import make_style_dataset
from hypernet.errors import ConfigError, HypernetError
from hypernet.hosts.diffusers import DiffusersHost


@pytest.fixture(scope="module")
def pipe():
    from hypernet.tiny.model import load_pipeline
    return load_pipeline()


@pytest.fixture(scope="module")
def run(pipe, tmp_path_factory):
    """A tiny-model run with copies at steps 2 and 4 and a validation loss at each."""
    from hypernet.train.trainer import train
    root = tmp_path_factory.mktemp("run")
    data = make_style_dataset(root / "data", count=4)
    host = DiffusersHost(pipe)
    options = TrainOptions(data=str(data), width=64, height=64, steps=4, save_every=2, preview_every=0,
                           learning_rate="5e-3", template="none", log_dir=str(root / "logs"),
                           output=str(root / "final.pt"), seed=2)
    result = train(host, options, create=CreateOptions(name="style", dims=host.model_dims()), show_progress=False)
    return Path(result.run_dir)


def test_copies_of_a_run_in_step_order_with_their_validation_loss(run):
    copies = compare.saved_copies([run])
    assert [(Path(c.path).name, c.step) for c in copies] == [("style-2.pt", 2), ("style-4.pt", 4)]
    logged = {step: m["val_loss"] for step, m in compare.measures(run).items()}
    assert [c.val_loss for c in copies] == [logged[2], logged[4]] and all(v > 0 for v in logged.values())
    assert "step 2" in copies[0].label and f"{logged[2]:.5f}" in copies[0].label
    # a file named directly finds its run's log; the final file repeats step 4 and is not listed twice
    direct = compare.saved_copies([run / "hypernetworks" / "style-4.pt", run.parent.parent.parent / "final.pt"])
    assert [c.step for c in direct] == [4] and direct[0].val_loss == logged[4]


def test_missing_or_empty_sources_are_explained(tmp_path):
    with pytest.raises(HypernetError, match="no such file"):
        compare.saved_copies([tmp_path / "nope"])
    with pytest.raises(HypernetError, match="not a training run folder"):
        compare.saved_copies([tmp_path])
    with pytest.raises(HypernetError, match="name a run folder"):
        compare.saved_copies([])


def test_options_check_strengths_and_take_the_run_defaults(run):
    with pytest.raises(ConfigError, match="strengths: strength 'loud' is not a number"):
        CompareOptions(strengths="0, loud")
    with pytest.raises(ConfigError, match="strength 20 is outside"):
        CompareOptions(strengths="20")
    settings = compare.settings_of(compare.saved_copies([run]))
    filled = compare.filled(CompareOptions(), settings)
    captions = {p.read_text() for p in Path(settings["options"]["data"]).glob("*.txt")}
    assert filled.prompt in captions and (filled.width, filled.height) == (64, 64)
    assert compare.model_of(settings) == settings["model"]["path"]


def test_grid_has_a_row_per_copy_and_a_column_per_prompt_and_strength(pipe, run):
    copies = compare.saved_copies([run])
    options = CompareOptions(prompt="a red circle on the left, blue background\na green square at the top, "
                             "white background", strengths="0, 1", steps=4, width=64, height=64, seed=5)
    result = compare.render(DiffusersHost(pipe), copies, options)
    cell = compare._cell(64)
    assert result.columns == [(p, s) for p in options.prompts() for s in (0.0, 1.0)]
    assert result.image.size == (200 + 4 * cell, result.image.height)
    header = result.image.height - 2 * cell
    cells = [[result.image.crop((200 + c * cell, header + r * cell, 200 + (c + 1) * cell, header + (r + 1) * cell))
              for c in range(4)] for r in range(2)]
    same = [[torch.equal(torch.tensor(list(a.getdata())), torch.tensor(list(b.getdata()))) for a, b in zip(*cells)]]
    assert same == [[True, False, True, False]]           # strength 0 is the same model in every row
    base = pipe("a red circle on the left, blue background", num_inference_steps=4, guidance_scale=7.0,
                generator=torch.Generator().manual_seed(5), width=64, height=64).images[0]
    assert list(cells[0][0].resize((64, 64), Image.NEAREST).getdata()) == list(base.getdata())  # the same seed
    assert not any(m._forward_pre_hooks for m in pipe.unet.modules())  # every copy's hooks came off again


def test_cli_compare_writes_the_grid_and_refuses_to_replace_it(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = [str(run), "--prompt", "a blue circle on the right, yellow background", "--strengths", "0,0.5,1",
            "--seed", "3", "--steps", "2", "--out", str(out)]
    assert main(["compare", *args]) == 0
    text = capsys.readouterr().out
    assert "style-2.pt: step 2, validation loss" in text and f"grid: {out} (2 rows" in text
    assert Image.open(out).size[0] == 200 + 3 * compare._cell(64)
    assert main(["compare", *args]) == 2
    assert "already exists" in capsys.readouterr().err


def test_keep_copies_and_never_replaces_unasked(run, tmp_path):
    source = run / "hypernetworks" / "style-2.pt"
    folder = tmp_path / "hypernetworks"
    folder.mkdir()
    kept = compare.keep(source, folder, "picked")
    assert Path(kept) == folder / "picked.pt" and Path(kept).read_bytes() == source.read_bytes()
    assert Path(kept + ".optim").is_file() and source.exists()           # copied, with its optimizer state
    assert hypernet.load(kept, with_optimizer=True).optimizer_state_dict is not None
    with pytest.raises(HypernetError, match="already exists"):
        compare.keep(run / "hypernetworks" / "style-4.pt", folder, "picked")
    assert hypernet.load(kept).step == 2
    compare.keep(run / "hypernetworks" / "style-4.pt", folder, "picked", overwrite=True)
    assert hypernet.load(kept).step == 4
    with pytest.raises(ConfigError):
        compare.keep(source, folder, "../escape")


def test_train_tab_panel_compares_and_keeps(pipe, run, tmp_path):
    gr = pytest.importorskip("gradio")
    from hypernet.apps.standalone import Studio
    from hypernet.ui import compare_panel, tabs
    studio = Studio(pipe, str(tmp_path / "hypernetworks"), str(run.parent.parent))
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    assert compare_panel.run_choices(panel) == [str(run)] and compare_panel.current_run(panel) == str(run)
    values = {f.name: f.default for f in dataclasses.fields(CompareOptions)}
    values.update(prompt="a red square at the top, green background", steps=2)
    message, image, update = compare_panel.compare_click(panel, gr, str(run),
                                                         *[values[n] for n in compare_panel.COMPARE_FIELDS])
    assert "style-2.pt: step 2, validation loss" in message and "Grid saved to" in message
    assert image.size[1] > 2 * compare._cell(64)
    assert update["choices"] == [str(run / "hypernetworks" / "style-2.pt"), str(run / "hypernetworks" / "style-4.pt")]
    assert update["value"] == compare.suggested_copy(run) and update["value"] in update["choices"]  # preselected
    assert "prompt kept" in message and message.count("(suggested") == 1
    assert "Kept style-2.pt" in compare_panel.keep_click(panel, update["choices"][0], "", False)
    assert "already exists" in compare_panel.keep_click(panel, update["choices"][0], "", False)
    assert "style-2" in studio.state.card_names()
    assert "Choose the copy" in compare_panel.keep_click(panel, None, "", False)
    with gr.Blocks():                                        # the panel is part of the Train tab
        comps = tabs.build_train_tab(gr, panel)
    assert set(comps["compare"]) >= {"run", "compare", "grid", "copy", "keep"}


def _recording(host, monkeypatch, seeds, after=None):
    """host.sample records each seed (a plain image, fast); `after(n)` runs after the n-th image."""
    def sample(prompt, negative, steps, cfg, seed, width, height, **kw):
        seeds.append(seed)
        if after is not None:
            after(len(seeds))
        return Image.new("RGB", (width, height), (10 * len(seeds), 0, 0))
    monkeypatch.setattr(host, "sample", sample)
    return host


def test_seed_minus_one_draws_one_seed_for_the_whole_grid_and_labels_it(pipe, run, monkeypatch):
    seeds, captions = [], []
    host = _recording(DiffusersHost(pipe), monkeypatch, seeds)
    grid = compare.labelled_grid
    monkeypatch.setattr(compare, "labelled_grid", lambda *a: captions.append(a[4]) or grid(*a))
    copies = compare.saved_copies([run])
    with pytest.raises(ConfigError, match="seed"):
        compare.render(host, copies, CompareOptions(prompt="a", seed=-1, width=64, height=64))
    options = compare.filled(CompareOptions(prompt="a", strengths="0, 1", seed=-1, steps=2), {})
    result = compare.render(host, copies, options)
    assert len(seeds) == 3 and len(set(seeds)) == 1 and seeds[0] >= 0 and result.seed == seeds[0]
    assert captions[-1].startswith(f"seed {seeds[0]},") and result.complete and result.cells == (3, 3)
    again = compare.filled(CompareOptions(prompt="a", seed=-1), {})
    assert again.seed >= 0                                 # each comparison draws its own


def test_stopping_between_images_keeps_the_partial_grid(pipe, run, monkeypatch):
    seeds, heard = [], []
    host = _recording(DiffusersHost(pipe), monkeypatch, seeds)
    copies = compare.saved_copies([run])
    options = CompareOptions(prompt="a", strengths="0, 0.5, 1", seed=4, steps=2, width=64, height=64)
    full = compare.render(host, copies, options)
    seeds.clear()
    part = compare.render(host, copies, options, lambda done, total: heard.append((done, total)) or done == 2)
    assert heard == [(0, 5), (1, 5), (2, 5)] and len(seeds) == 2
    assert part.cells == (2, 5) and not part.complete and part.to_dict()["complete"] is False
    assert part.image.size == full.image.size             # the same grid, grey where an image is missing


def test_the_panels_stop_button_stops_a_running_comparison(pipe, run, tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    from hypernet.apps.standalone import Studio
    from hypernet.ui import actions, compare_panel, tabs
    studio = Studio(pipe, str(tmp_path / "hypernetworks"), str(run.parent.parent))
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    seeds, shown = [], []
    host = _recording(DiffusersHost(pipe), monkeypatch, seeds, after=lambda n: n == 1 and actions.stop_compare(
        studio.state))
    monkeypatch.setattr(studio.runtime, "host", lambda: host)
    values = {f.name: f.default for f in dataclasses.fields(CompareOptions)}
    values.update(prompt="a red square", strengths="0, 1", steps=2)
    message, image, _ = compare_panel.compare_click(panel, gr, str(run), *[values[n] for n in
                                                                          compare_panel.COMPARE_FIELDS],
                                                    progress=lambda value, desc, unit: shown.append((value, unit)))
    assert "Stopped after 1 of 3 images" in message and image is not None and shown == [((0, 3), "images"), ((1, 3), "images")]
    assert f"Seed {values['seed']}" in message
    message, _, _ = compare_panel.compare_click(panel, gr, str(run), *[values[n] for n in
                                                                       compare_panel.COMPARE_FIELDS])
    assert "Stopped" not in message                        # the next comparison starts afresh
    actions.stop_compare(studio.state)                     # Stop pressed while the comparison waits in the queue
    message, _, _ = compare_panel.compare_click(panel, gr, str(run), *[values[n] for n in
                                                                       compare_panel.COMPARE_FIELDS])
    assert "Stopped after 0 of 3 images" in message
    actions.begin_compare(studio.state)                    # a click forgets a stop pressed while nothing ran
    message, _, _ = compare_panel.compare_click(panel, gr, str(run), *[values[n] for n in
                                                                       compare_panel.COMPARE_FIELDS])
    assert "Stopped" not in message


def test_a_run_on_the_tiny_model_finds_it_again_from_another_checkout(tmp_path):
    from hypernet.apps import models
    from hypernet.tiny.model import ASSETS
    moved = {"model": {"name": ASSETS.name, "path": str(tmp_path / "elsewhere" / ASSETS.name)}}
    assert models.model_of(moved) == str(ASSETS)
    assert models.model_of({"model": {"name": ASSETS.name, "path": str(tmp_path)}}) == str(tmp_path)
    with pytest.raises(HypernetError, match="is not at"):
        models.model_of({"model": {"name": "other", "path": str(tmp_path / "gone")}})
    with pytest.raises(HypernetError, match="is not at"):
        models.model_of({"model": "not a table"})
