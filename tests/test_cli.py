"""python -m hypernet: create / info / convert / check, run as a user would."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hypernet
from hypernet.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "hypernet", *args], capture_output=True, text=True, cwd=ROOT)


def test_create_info_convert_check_end_to_end(tmp_path):
    out = tmp_path / "gollum.pt"
    r = run("create", str(out), "--dims", "768,320,640,1280", "--layer-structure", "1, 2, 1",
            "--activation", "relu", "--no-layer-norm", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "MiB" in r.stdout and "21,9" in r.stdout
    hn = hypernet.load(out)
    assert hn.name == "gollum" and hn.dims == [320, 640, 768, 1280] and hn.config.activation == "relu"

    r = run("info", str(out), "--json")
    info = json.loads(r.stdout)
    assert info["name"] == "gollum" and info["parameters"] == hn.parameter_count()
    assert info["shorthash"] == hypernet.shorthash(out) and info["webui_loadable"] is True
    assert info["base_model_by_width"] == ["SD1"] and info["step"] == 0

    st = tmp_path / "gollum.safetensors"
    assert run("convert", str(out), str(st)).returncode == 0
    back = tmp_path / "back.pt"
    assert run("convert", str(st), str(back)).returncode == 0
    a, b = hypernet.load(out), hypernet.load(back)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))

    r = run("check", str(st))
    assert r.returncode == 0 and r.stdout.startswith("ok:")


def test_create_all_options_in_process(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["create", str(out), "--name", "styled", "--dims", "1024", "--layer-structure", "1,1.5,1",
                 "--activation", "elu", "--weight-init", "XavierNormal", "--layer-norm", "--dropout-structure",
                 "0,0.1,0", "--activate-output"]) == 0
    c = hypernet.load(out).config
    assert (c.name, c.dims, c.layer_structure, c.activation, c.weight_init, c.layer_norm, c.dropout_structure,
            c.activate_output) == ("styled", [1024], [1, 1.5, 1], "elu", "XavierNormal", True, [0, 0.1, 0], True)


def test_create_refuses_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main(["create", str(out), "--dims", "8"]) == 0
    before = out.read_bytes()
    assert main(["create", str(out), "--dims", "16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["create", str(out), "--dims", "16", "--overwrite"]) == 0
    assert hypernet.load(out).dims == [16]


def test_create_refuses_a_missing_folder(tmp_path, capsys):
    missing = tmp_path / "typo" / "deeper"
    assert main(["create", str(missing / "x.pt"), "--dims", "8"]) == 2
    err = capsys.readouterr().err
    assert f"folder {missing} does not exist; create it first" in err
    assert not (tmp_path / "typo").exists()


class ModelLoaded(Exception):
    """What the stand-in model loader raises: reaching it means every earlier check passed."""


@pytest.fixture
def no_model(monkeypatch):
    import hypernet.hosts.diffusers

    def load_pipeline(*args, **kwargs):
        raise ModelLoaded(args)

    monkeypatch.setattr(hypernet.hosts.diffusers, "load_pipeline", load_pipeline)


@pytest.fixture
def images(tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "red.png")
    return folder


def test_train_checks_name_and_data_before_loading_a_model(no_model, images, tmp_path, capsys):
    train = ["train", "--model", str(tmp_path / "model"), "--log-dir", str(tmp_path / "logs")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no images here")
    for extra, words in ((["--data", str(tmp_path / "nowhere")], "not found"),
                         (["--data", str(empty)], "no images"),
                         ([], "--data"),
                         (["--data", str(images), "--name", "a/b"], "name"),
                         (["--data", str(images), "--name", "none"], "reserved"),
                         (["--data", str(images), "--hypernetwork", str(images / "red.png"), "--name", "x:y"], "name")):
        assert main(train + extra) == 2, extra
        assert words in capsys.readouterr().err, extra
    with pytest.raises(ModelLoaded):                          # good flags get as far as the model
        main(train + ["--data", str(images), "--name", "fine"])


def test_train_refuses_to_replace_an_output_without_overwrite(no_model, images, tmp_path, capsys):
    out = tmp_path / "taken.pt"
    hypernet.create(dims=[8], name="taken").save(out)
    before = out.read_bytes()
    train = ["train", "--model", str(tmp_path / "model"), "--data", str(images), "--log-dir", str(tmp_path / "logs")]
    assert main(train + ["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "already exists" in err and "--overwrite" in err
    (tmp_path / "logs").mkdir()
    default = tmp_path / "logs" / "images.pt"                 # <log_dir>/<name>.pt when no --output
    default.write_bytes(b"an older run")
    assert main(train) == 2 and str(default) in capsys.readouterr().err
    assert out.read_bytes() == before and default.read_bytes() == b"an older run"
    for allowed in (["--output", str(out), "--overwrite"],                     # the flag
                    ["--output", str(out), "--hypernetwork", str(out)]):      # continuing a file into itself
        with pytest.raises(ModelLoaded):
            main(train + allowed)


@pytest.mark.parametrize("args,words", [
    (["create", "{d}/a.pt", "--layer-structure", "1, 2"], "layer_structure"),
    (["create", "{d}/a.pt", "--activation", "nope"], "accepted: linear, relu"),
    (["create", "{d}/a.txt"], ".pt or .safetensors"),
    (["info", "{d}/missing.pt"], "not found"),
    (["check", "{d}/garbage.pt"], "neither a PyTorch (.pt) nor a safetensors file"),
    (["convert", "{d}/garbage.pt", "{d}/x.safetensors"], "garbage.pt"),
    (["frobnicate"], "invalid choice"),
    (["create"], "required"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, words):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a torch file at all")
    r = run(*[a.format(d=tmp_path) for a in args])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and words in lines[0]
    assert "Traceback" not in r.stderr


def test_info_text_output(tmp_path, capsys):
    out = tmp_path / "t.pt"
    hypernet.create(dims=[8]).save(out)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    for field in ("name", "dims", "parameters", "step", "shorthash", "sd_checkpoint_name", "layer_structure"):
        assert field in text
