"""The built-in tiny SD model: its scenes, its word-level tokenizer, the build script and the shipped weights.

The steering checks are measured against what a random-weight pipeline of the same kind does
(test_random_weights_do_not_pass_the_steering_checks), so they cannot pass by accident.
"""
import json
import random
import socket

import numpy as np
import pytest
import torch

from hypernet import HypernetError
from hypernet.tiny import model as tiny
from hypernet.tiny.build import evaluate, generate
from hypernet.tiny.scenes import POSITIONS, PALETTE, WORDS, describe, prompt, random_scene, scene
from hypernet.tiny.__main__ import main as tiny_main

SEEDS = [101, 102, 103, 104]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny ops: threads only add contention on a small shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tiny model tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def shipped():
    return tiny.load_pipeline()


def _arrays(images):
    return [np.asarray(im, dtype=np.float32) for im in images]


# ---------------------------------------------------------------- steering measures (also run on random weights)

def colour_margin(pipe) -> float:
    """Red minus blue channel in the centre of "a red square" images, less the same for "a blue square" (0-255)."""
    def red_minus_blue(colour):
        images = generate(pipe, [prompt(colour, "square", "center", "white")] * len(SEEDS), SEEDS, steps=15)
        return float(np.mean([a[20:44, 20:44, 0].mean() - a[20:44, 20:44, 2].mean() for a in _arrays(images)]))
    return red_minus_blue("red") - red_minus_blue("blue")


def background_margin(pipe) -> float:
    """Whole-image green minus blue channel for "..., green background" less the same for "..., blue background"."""
    def green_minus_blue(bg):
        images = generate(pipe, [prompt("white", "circle", "left", bg)] * len(SEEDS), SEEDS, steps=15)
        return float(np.mean([a[..., 1].mean() - a[..., 2].mean() for a in _arrays(images)]))
    return green_minus_blue("green") - green_minus_blue("blue")


def position_margins(pipe) -> list:
    """Per seed: (left-half minus right-half distance from the white background) for "on the left", minus the
    same for "on the right". Positive = the shape moved the way the prompt said."""
    white = np.array(PALETTE["white"], dtype=np.float32)

    def left_minus_right(position):
        images = generate(pipe, [prompt("black", "circle", position, "white")] * len(SEEDS), SEEDS, steps=15)
        out = []
        for a in _arrays(images):
            dist = np.sqrt(((a - white) ** 2).sum(-1))
            out.append(dist[:, :32].mean() - dist[:, 32:].mean())
        return np.array(out)
    return list(left_minus_right("left") - left_minus_right("right"))


# ---------------------------------------------------------------- scenes and tokenizer

def test_scenes_are_deterministic_and_read_back():
    a_img, a_cap = scene(random.Random(5))
    b_img, b_cap = scene(random.Random(5))
    assert a_cap == b_cap and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert a_img.size == (64, 64) and a_img.mode == "RGB"
    rng = random.Random(0)
    for _ in range(200):
        s = random_scene(rng)
        got = describe(s.render())
        shape = s.shapes[0]
        assert got == {"background": s.background, "colour": shape.colour, "position": shape.position,
                       "kind": shape.kind}
        cap = s.caption()
        assert cap == f"a {shape.colour} {shape.kind} {POSITIONS[shape.position][0]}, {s.background} background"
        assert shape.colour != s.background


def test_word_tokenizer_keeps_scene_words_whole(tmp_path):
    tok = tiny.load_tokenizer(tiny.write_word_tokenizer(tmp_path, WORDS))
    assert len(tok) > 512  # the byte-level vocabulary is still there
    for word in WORDS:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("a red circle on the left, blue background").input_ids
    assert len(ids) == 2 + 9  # start, 8 words and a comma, end
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1  # other text: characters, still encodable
    assert tiny.load_tokenizer(tiny.ASSETS / "tokenizer").get_vocab() == tok.get_vocab()  # the shipped one


# ---------------------------------------------------------------- the shipped model

def test_shipped_weights_load_offline(no_network):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    pipe = tiny.load_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.unet.dtype == torch.float32 and not any(p.requires_grad for p in pipe.unet.parameters())
    size = (tiny.ASSETS / tiny.WEIGHTS).stat().st_size
    assert 1e6 < size < 8e6
    scale = pipe.vae.config.scaling_factor
    assert scale != 0.18215 and 0.05 < scale < 20  # set by the build, not the default
    build = json.loads((tiny.ASSETS / tiny.CONFIG).read_text())["build"]
    assert build["seed"] == 0 and build["scale"] == 1.0
    assert (tiny.ASSETS / "README.md").is_file()


def test_missing_weights_say_how_to_build(tmp_path):
    with pytest.raises(HypernetError, match="python -m hypernet.tiny build"):
        tiny.load_pipeline(tmp_path)


def test_generation_is_deterministic_per_seed(shipped):
    text = "a yellow triangle at the top, purple background"
    a, b, c = _arrays(generate(shipped, [text] * 3, [7, 7, 8], steps=10))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_colour_words_steer_the_shape_and_the_background(shipped):
    assert colour_margin(shipped) > 100  # random weights: ~8
    assert background_margin(shipped) > 80  # random weights: ~1


def test_position_words_move_the_shape(shipped):
    margins = position_margins(shipped)
    # random weights: every margin within +-2; the trained model moves the shape the asked way for most seeds
    assert np.mean(margins) > 40 and sum(m > 10 for m in margins) >= 3, margins


def test_generated_scenes_follow_their_captions(shipped):
    acc = evaluate(shipped, count=32, seed=4321, steps=15)
    # chance: background/colour ~0.13, position 0.2, kind 0.33 (random weights: 0.25 / 0.13 / 0.19 / 0.31)
    assert acc["background"] >= 0.8, acc
    assert acc["colour"] >= 0.4, acc
    assert acc["position"] >= 0.35, acc


def test_random_weights_do_not_pass_the_steering_checks():
    pipe = tiny.pipeline("sd1", seed=0)
    assert colour_margin(pipe) < 40
    assert background_margin(pipe) < 40
    assert max(position_margins(pipe)) < 20
    acc = evaluate(pipe, count=16, seed=4321, steps=10)
    assert acc["background"] < 0.5 and acc["colour"] < 0.5 and acc["position"] < 0.5, acc


# ---------------------------------------------------------------- the build script

def test_build_runs_end_to_end_and_loads(tmp_path, no_network):
    from hypernet.tiny.build import build
    info = build(tmp_path / "m", seed=3, scale=0.003, show=False, samples=False, log=lambda s: None)
    assert info["vae_steps"] >= 1 and info["unet_steps"] >= 1
    pipe = tiny.load_pipeline(tmp_path / "m")
    assert pipe.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    (img,) = generate(pipe, ["a red circle"], [0], steps=2)
    assert img.size == (64, 64)
    assert json.loads((tmp_path / "m" / tiny.CONFIG).read_text())["build"]["seed"] == 3


def test_sample_command_writes_a_png(tmp_path):
    out = tmp_path / "x.png"
    assert tiny_main(["sample", "a red circle on the left", "a blue square", "-n", "2", "--steps", "4",
                      "--out", str(out), "--scale", "1"]) == 0
    from PIL import Image
    assert Image.open(out).size == (128, 128)


def test_stored_text_encoder_keys_load_with_either_transformers_naming():
    """transformers 4 names CLIPTextModel weights text_model.*, 5 drops the prefix; the shipped file has one."""
    import torch
    from hypernet.tiny.model import _own_key_names

    class Prefixed(torch.nn.Module):          # transformers 4 layout
        def __init__(self):
            super().__init__()
            self.text_model = torch.nn.Linear(2, 2)

    bare = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    prefixed = {"text_model." + k: v for k, v in bare.items()}
    assert set(_own_key_names(bare, Prefixed())) == set(prefixed)
    assert set(_own_key_names(prefixed, torch.nn.Linear(2, 2))) == set(bare)
    assert _own_key_names(bare, torch.nn.Linear(2, 2)) is bare
