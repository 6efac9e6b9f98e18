"""The demo on the built-in tiny model, and the learnability check: training on the style set must move
generations for unseen prompts toward the style by a margin registered here before the run, one an untrained
hypernetwork fails.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hypernet
from hypernet import demo
from hypernet.cli import main
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
    from hypernet.tiny import load_pipeline
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


def test_an_untrained_hypernetwork_fails_the_margin(trained, pipe):
    fresh = hypernet.from_options(CreateOptions(name="fresh", dims=[64, 32], activation="relu"), seed=0)
    measured = demo.compare(pipe, fresh, strengths=(0.0, 1.0))
    base, styled = measured[0.0][1], measured[1.0][1]
    assert base == pytest.approx(trained.base_distance)
    assert 1 - styled / base < REQUIRED_SHIFT


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
