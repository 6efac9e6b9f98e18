"""The demo on the built-in tiny model, and the learnability check: training on the style set must move
generations for unseen prompts toward the style by a margin registered here before the run, one an untrained
hypernetwork fails.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypernet
from hypernet.tiny import demo
from hypernet.apps.cli import main
from hypernet.config import CreateOptions, DemoOptions
from hypernet.errors import ConfigError

# Pre-registered: generations at strength 1.0 must be at least 20% closer to the palette than without.
REQUIRED_SHIFT = 0.20
STEPS = DemoOptions().steps  # the demo exactly as shipped


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo.run(DemoOptions(out=str(out)), show_progress=False)


@pytest.fixture(scope="module")
def pipe():
    from hypernet.tiny.model import load_pipeline
    return load_pipeline()


def test_style_set_is_in_the_palette_and_leaves_the_comparison_prompts_unseen(tmp_path):
    folder = demo.make_style_dataset(tmp_path / "set", count=24)
    images = sorted(folder.glob("*.png"))
    captions = {p.with_suffix(".txt").read_text() for p in images}
    assert len(images) == 24 and len(captions) > 12
    assert not captions & set(demo.HELD_OUT_PROMPTS)
    assert all(demo.palette_distance(Image.open(p)) == 0.0 for p in images)


def test_palette_distance_is_zero_on_the_palette_and_grows_away_from_it():
    on = Image.fromarray(np.tile(demo.PALETTE[2].astype(np.uint8), (4, 4, 1)))
    green = Image.fromarray(np.tile(np.array([0, 255, 0], np.uint8), (4, 4, 1)))
    assert demo.palette_distance(on) == 0.0
    assert demo.palette_distance(green) > 100


def test_training_moves_unseen_prompts_toward_the_style_by_the_registered_margin(trained):
    assert trained.base_distance > 60, "the base model should not already draw in the palette"
    assert trained.shift >= REQUIRED_SHIFT, (trained.base_distance, trained.styled_distance)
    # strength scales the effect: half strength lands in between
    assert trained.styled_distance < trained.half_distance < trained.base_distance


def measure_set(trained):
    captions = {p.read_text() for p in (Path(trained.out_dir) / "style-data").glob("*.txt")}
    return demo.measure_scenes(trained.measure_prompts, exclude=captions)


def test_an_untrained_hypernetwork_fails_the_margin(trained, pipe):
    fresh = hypernet.from_options(CreateOptions(name="fresh", dims=[64, 32], activation="relu"), seed=0)
    scenes = measure_set(trained)
    base, styled = demo.measure(pipe, scenes, demo.PALETTE), demo.measure(pipe, scenes, demo.PALETTE, fresh)
    assert base.distance == pytest.approx(trained.base_distance)
    assert demo.trade_off(base, styled)["shift"] < REQUIRED_SHIFT


def test_every_saved_copy_is_measured_and_the_best_trade_off_named(trained):
    summary = json.loads((Path(trained.out_dir) / "demo.json").read_text())
    steps = summary["steps"]
    assert [row["step"] for row in steps] == [STEPS // 6 * (i + 1) for i in range(6)]
    assert all(set(row) == {"step", "shift", "content_kept", "val_loss", "prompt_kept", "style"} for row in steps)
    assert all(isinstance(row["val_loss"], float) and row["val_loss"] > 0 for row in steps)
    assert all(row["prompt_kept"] > 0 and row["style"] > 0 for row in steps)
    assert summary["suggested_step"] in [row["step"] for row in steps]
    assert summary["content_kept"] == pytest.approx(steps[-1]["content_kept"])  # the final file is the last copy
    assert summary["shift"] == pytest.approx(steps[-1]["shift"])
    assert summary["best_step"] == demo.best_step(steps) and isinstance(summary["best_step"], int)
    assert summary["measure_prompts"] == 128 and trained.measure_prompts == 128   # one fact is 1/256 of content
    assert len(measure_set(trained)) == 128 and not {s.caption() for s in measure_set(trained)} & {
        p.read_text() for p in (Path(trained.out_dir) / "style-data").glob("*.txt")}


def test_content_read_back_scores_the_asked_shape_and_position():
    scenes = demo.measure_scenes(8)
    assert demo.content_read_back([s.render() for s in scenes], scenes) == 1.0
    blank = [Image.new("RGB", (64, 64), "white")] * 8
    assert demo.content_read_back(blank, scenes) == 0.0
    rows = [{"step": 1, "shift": 0.6, "content_kept": 0.5}, {"step": 2, "shift": 0.3, "content_kept": 0.95},
            {"step": 3, "shift": 0.45, "content_kept": 0.92}]
    assert demo.best_step(rows) == 3                        # the largest shift that keeps 0.9 of the content
    assert demo.best_step([dict(r, content_kept=0.5) for r in rows]) == 1


def test_the_webui_recipe_is_its_defaults(tmp_path):
    result = demo.run(DemoOptions(out=str(tmp_path), steps=2, recipe="webui", copies=1, measure_prompts=2),
                      show_progress=False)
    settings = json.loads((Path(result.loss_csv).parent / "settings.json").read_text())
    assert settings["options"]["learning_rate"] == "0.00001" and settings["options"]["template"] == "style_filewords"
    assert settings["options"]["resize"] == "stretch" and settings["options"]["flip"] is False
    assert hypernet.load(result.pt).config.activation == "linear" and result.recipe == "webui"


def test_the_demo_trains_a_half_precision_model_and_measures_in_float32(tmp_path, capsys):
    """--dtype fp16: the frozen model trains in float16 (with loss scaling), the file and every measure are as for
    float32; demo.json records the dtype and the final validation loss."""
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--copies", "1", "--measure-prompts", "2",
                 "--dtype", "fp16"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["dtype"] == "fp16" and record["val_loss"] > 0 and "frozen model in fp16" in printed
    assert record["steps"][0]["prompt_kept"] > 0 and record["suggested_step"] == 2      # measured in fp16 as well
    assert "suggested copy (from prompt kept and style strength, no images): step 2" in printed
    hn = hypernet.load(record["pt"])
    assert hn.step == 2 and all(p.dtype == torch.float32 for p in hn.parameters())
    with pytest.raises(ConfigError) as err:
        DemoOptions(dtype="fp64")
    assert err.value.field == "dtype"


def test_strength_zero_reproduces_the_base_images_exactly(trained, pipe):
    hn = hypernet.load(trained.pt)
    base = demo.generate(pipe, demo.HELD_OUT_PROMPTS[:2], demo.HELD_OUT_SEEDS[:2], steps=8, cfg=5.0)
    with hypernet.attach(pipe.unet, [(hn, 0.0)], warn=False):
        zero = demo.generate(pipe, demo.HELD_OUT_PROMPTS[:2], demo.HELD_OUT_SEEDS[:2], steps=8, cfg=5.0)
    with hypernet.attach(pipe.unet, [(hn, 1.0)], warn=False):
        full = demo.generate(pipe, demo.HELD_OUT_PROMPTS[:2], demo.HELD_OUT_SEEDS[:2], steps=8, cfg=5.0)
    for a, b, c in zip(base, zero, full):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_demo_writes_every_promised_file(trained):
    out = Path(trained.out_dir)
    for path in (trained.pt, trained.safetensors, trained.grid, trained.loss_csv, trained.loss_png):
        assert Path(path).is_file() and Path(path).stat().st_size > 0, path
    pt, st = hypernet.load(trained.pt), hypernet.load(trained.safetensors)
    assert pt.step == STEPS == st.step and sorted(pt.dims) == [32, 64]
    grid = Image.open(trained.grid)
    assert grid.width > 3 * 128 and grid.height >= len(demo.HELD_OUT_PROMPTS) * 128
    summary = json.loads((out / "demo.json").read_text())
    assert summary["shift"] == pytest.approx(trained.shift)
    rows = (Path(trained.loss_csv).read_text().strip().splitlines())
    assert rows[0].startswith("step,") and len(rows) > STEPS // 10


def test_demo_cli_on_your_own_folder(tmp_path, capsys):
    data = tmp_path / "mine"
    demo.make_style_dataset(data, count=6, seed=3)
    code = main(["demo", "--out", str(tmp_path / "out"), "--data", str(data), "--steps", "2", "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "style shift" in printed and str(tmp_path / "out" / "mine.pt") in printed
    assert (tmp_path / "out" / "mine.safetensors").is_file()
    assert not (tmp_path / "out" / "style-data").exists()


def test_dataset_palette_summarises_a_folder(tmp_path):
    folder = demo.make_style_dataset(tmp_path / "set", count=8)
    palette = demo.dataset_palette(folder, colours=8)
    assert palette.shape == (8, 3)
    images = [Image.open(p) for p in sorted(folder.glob("*.png"))]
    summarised = np.mean([demo.palette_distance(i, palette) for i in images])
    unrelated = np.random.default_rng(0).uniform(0, 255, (8, 3)).astype(np.float32)
    assert summarised < 10 < 30 < np.mean([demo.palette_distance(i, unrelated) for i in images])


def test_demo_refuses_bad_input_with_the_field_named(tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        DemoOptions(steps=0)
    assert err.value.field == "steps"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["demo", "--out", str(tmp_path / "o"), "--data", str(empty), "--steps", "2"]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["demo", "--learning-rate", "fast"]) == 2
    assert "learning_rate" in capsys.readouterr().err
