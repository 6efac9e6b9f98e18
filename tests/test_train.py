"""The training loop on tiny real pipelines (diffusers SD1 / SD2-v / SDXL) and on the ldm UNet via the webui host."""
import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import hypernet
from hypernet import HypernetError
from hypernet.tiny import model as tiny
from hypernet.config import CreateOptions, TrainOptions
from hypernet.train.data import DatasetError
from hypernet.hosts.diffusers import DiffusersHost
from hypernet.train.trainer import Trainer, train
from models import StandInLatentDiffusion

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int = 4, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (230, 200, 30)]
    for i in range(n):
        img = Image.new("RGB", (size + 8 * i, size), colours[i % len(colours)])
        for x in range(0, img.width, 8):
            img.putpixel((x, size // 2), (255, 255, 255))
        img.save(folder / f"{i:02d}-shape {i}.png")
        (folder / f"{i:02d}-shape {i}.txt").write_text(f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny.pipeline(kind, seed=1) for kind in ("sd1", "sd2", "sdxl")}


def opts(data_dir, tmp_path, **kw):
    base = dict(data=str(data_dir), width=64, height=64, steps=4, learning_rate="1e-3", log_dir=str(tmp_path / "logs"),
                save_every=0, preview_every=0, log_every=1, seed=123, template="subject_filewords")
    base.update(kw)
    return TrainOptions(**base)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def eval_loss(host, hn, data_dir, tmp_path, n=8):
    """Mean loss over fixed (latent, noise, timestep) draws: comparable before and after training."""
    trainer = Trainer(host, opts(data_dir, tmp_path, seed=999, steps=1), hn, show_progress=False)
    dataset = trainer._build_dataset()
    import random
    batches = dataset.batches(4, random.Random(5))
    losses = []
    with hypernet.attach(host.unet, [(hn, 1.0)], warn=False), torch.no_grad():
        for i in range(n):
            losses.append(float(trainer._micro_loss(next(batches), 10_000 + i, 0)))
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------- learning
def test_loss_falls_and_only_the_hypernetwork_changes(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    frozen_before = [state(m) for m in host.frozen_modules()]
    hn = hypernet.create(dims=host.model_dims(), name="learner", seed=0)
    start = state(hn)
    before = eval_loss(host, hn, data_dir, tmp_path)
    result = train(host, opts(data_dir, tmp_path, steps=40, batch_size=2, learning_rate="1e-2"), hn,
                   show_progress=False)
    after = eval_loss(host, hn, data_dir, tmp_path)
    assert after < before * 0.9, (before, after)  # measured: about 0.85 after 40 steps
    assert not same_state(start, state(hn))
    assert len(frozen_before) == len(host.frozen_modules()) == 3  # the UNet, the VAE and the text encoder
    for module, saved in zip(host.frozen_modules(), frozen_before):
        assert same_state(saved, state(module))
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert result.stopped == "completed" and result.step == 40
    assert not hn.training and not any(p.requires_grad for p in hn.parameters())
    assert not any(m._forward_pre_hooks for m in host.unet.modules())  # hooks removed after training


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_v_prediction_and_sdxl_train(pipes, data_dir, tmp_path, kind):
    host = DiffusersHost(pipes[kind])
    assert host.prediction_type == ("v" if kind == "sd2" else "epsilon")
    assert (kind == "sdxl") == isinstance(host.encode_prompts(["x"]), dict)
    hn = hypernet.create(dims=host.model_dims(), name=kind, seed=0)
    start = state(hn)
    result = train(host, opts(data_dir, tmp_path, steps=3, resize="buckets", batch_size=2), hn, show_progress=False)
    assert result.step == 3 and result.last_loss is not None and result.last_loss == result.last_loss
    assert not same_state(start, state(hn))
    loaded = hypernet.load(result.output)
    assert loaded.step == 3 and loaded.sd_checkpoint_name


def test_default_dims_follow_the_model(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sdxl"])
    result = train(host, opts(data_dir, tmp_path, steps=1), create=CreateOptions(name="auto", dims=host.model_dims()),
                   show_progress=False)
    assert hypernet.load(result.output).dims == sorted(host.model_dims())
    trainer = Trainer(host, opts(data_dir, tmp_path, steps=1), show_progress=False)
    assert trainer.hn.dims == sorted(host.model_dims())


# ---------------------------------------------------------------------------------------------- outputs
def test_saves_logs_settings_and_previews(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    o = opts(data_dir, tmp_path, steps=4, save_every=2, preview_every=2, preview_steps=2, preview_prompt="a red square",
             output=str(tmp_path / "final" / "styled.pt"))
    hn = hypernet.create(dims=host.model_dims(), name="styled", seed=0)
    rng_before = torch.get_rng_state()
    result = train(host, o, hn, show_progress=False)
    run = Path(result.run_dir)
    assert run.parent.parent == tmp_path / "logs"
    copies = sorted((run / "hypernetworks").glob("*.pt"))
    assert [p.name for p in copies] == ["styled-2.pt", "styled-4.pt"]
    for p in copies:
        step = int(p.stem.split("-")[1])
        assert hypernet.load(p).step == step  # the webui stores step-1 here; we do not
        sidecar = torch.load(str(p) + ".optim", weights_only=True)
        assert sidecar["hash"] == hypernet.shorthash(p) and sidecar["optimizer_name"] == "AdamW"
        assert hypernet.webui_check(p) is None
    assert result.output == str(tmp_path / "final" / "styled.pt") and hypernet.load(result.output).step == 4
    rows = list(csv.reader(open(run / "hypernetwork_loss.csv")))
    assert rows[0] == ["step", "epoch", "epoch_step", "loss", "learn_rate", "val_loss", "prompt_kept", "style"]  # the webui's five first
    assert [r[5] != "" for r in rows[1:]] == [False, True, False, True]  # scored at each save
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"] and all(float(r[3]) > 0 for r in rows[1:])
    assert (run / "loss.png").exists() and Image.open(run / "loss.png").size == (800, 400)
    settings = json.loads((run / "settings.json").read_text())
    assert settings["options"]["steps"] == 4 and settings["seed"] == 123
    assert settings["model"]["kind"] == "sd1" and settings["hypernetwork"]["name"] == "styled"
    previews = sorted((run / "images").glob("*.png"))
    assert [p.name for p in previews] == ["styled-2.png", "styled-4.png"]
    assert Image.open(previews[0]).size == (64, 64)
    assert torch.equal(rng_before, torch.get_rng_state())  # the caller's random numbers are left as they were


def test_preview_restores_rng_state(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    trainer = Trainer(host, opts(data_dir, tmp_path, preview_steps=2), hypernet.create(dims=host.model_dims()),
                      show_progress=False)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    batch = next(trainer._build_dataset().batches(1, __import__("random").Random(0)))
    torch.manual_seed(4)
    trainer.hn.train()
    path = trainer.previews.render(1, batch)[-1]
    assert Path(path).exists() and torch.equal(torch.rand(3), expected)


def test_resume_continues_exactly(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    create = CreateOptions(name="resume", dims=host.model_dims(), dropout_structure=[0, 0.1, 0])
    kw = dict(batch_size=2, gradient_accumulation=2, latent_sampling="random", flip=True, shuffle_tags=True)
    straight = train(host, opts(data_dir, tmp_path / "a", steps=6, **kw), create=create, show_progress=False)
    half = train(host, opts(data_dir, tmp_path / "b", steps=3, **kw), create=create, show_progress=False)
    assert hypernet.load(half.output).step == 3
    resumed = train(host, opts(data_dir, tmp_path / "b", steps=6, **kw), half.output, show_progress=False)
    assert resumed.start_step == 3 and resumed.step == 6
    run = Path(resumed.run_dir)                           # one run folder, both runs' settings kept
    assert json.loads((run / "settings.json").read_text())["start_step"] == 0
    assert json.loads((run / "settings-resumed-at-3.json").read_text())["start_step"] == 3
    a, b = hypernet.load(straight.output), hypernet.load(resumed.output)
    assert same_state(state(a), state(b))
    # without the optimizer state the continuation differs: the test above can fail
    os.remove(half.output + ".optim")
    c = train(host, opts(data_dir, tmp_path / "c", steps=3, **kw), create=create, show_progress=False)
    os.remove(c.output + ".optim")
    lost = train(host, opts(data_dir, tmp_path / "c", steps=6, **kw), c.output, show_progress=False)
    assert not same_state(state(a), state(hypernet.load(lost.output)))


def test_already_trained_file_returns_without_work(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    hn = hypernet.create(dims=host.model_dims())
    hn.step = 10
    result = train(host, opts(data_dir, tmp_path, steps=5), hn, show_progress=False)
    assert result.stopped == "already-done" and result.output is None


# ---------------------------------------------------------------------------------------------- safety
def test_nan_steps_are_skipped_then_training_stops_and_source_is_untouched(pipes, data_dir, tmp_path, monkeypatch):
    host = DiffusersHost(pipes["sd1"])
    source = tmp_path / "src.pt"
    hypernet.create(dims=host.model_dims(), name="src", seed=0).save(source)
    before = source.read_bytes()
    real = host.predict
    calls = {"n": 0}

    def sometimes_nan(x, t, c):
        calls["n"] += 1
        out = real(x, t, c)
        return out * float("nan") if calls["n"] in (2, 3) or calls["n"] >= 6 else out

    monkeypatch.setattr(host, "predict", sometimes_nan)
    with pytest.raises(HypernetError, match="3 steps in a row had NaN") as info:
        train(host, opts(data_dir, tmp_path, steps=50, max_nan_steps=3, output=str(source), validation_every=0,
                         probe_draws=0), str(source), show_progress=False)  # no measures: they would call predict too
    assert source.read_bytes() == before  # never overwritten by a failed run
    assert "saved to" in str(info.value)
    rescued = hypernet.load(str(info.value).split("saved to ")[1])
    assert rescued.step == 3 and rescued.is_finite()  # steps 1, 4, 5 succeeded (2, 3 skipped)


def test_crash_mid_run_never_overwrites_the_source(pipes, data_dir, tmp_path, monkeypatch):
    host = DiffusersHost(pipes["sd1"])
    source = tmp_path / "src.pt"
    hypernet.create(dims=host.model_dims(), name="src", seed=0).save(source)
    before = source.read_bytes()
    real, calls = host.predict, {"n": 0}

    def crash(x, t, c):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(x, t, c)

    monkeypatch.setattr(host, "predict", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        train(host, opts(data_dir, tmp_path, steps=10, output=str(source), validation_every=0, probe_draws=0),
              str(source), show_progress=False)  # no measures: they would call predict too
    assert source.read_bytes() == before
    assert list((tmp_path / "logs").rglob("src-2-unfinished.pt"))


def test_stop_flag_finishes_the_step_and_saves(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    stop = threading.Event()

    def progress(report):
        if report.step == 2:
            stop.set()

    result = train(host, opts(data_dir, tmp_path, steps=100), hypernet.create(dims=host.model_dims(), name="stopme"),
                   stop=stop, on_progress=progress, show_progress=False)
    assert result.stopped == "interrupted" and result.step == 2
    assert hypernet.load(result.output).step == 2
    copy = Path(result.run_dir) / "hypernetworks" / "stopme-2.pt"   # the numbered copy, as periodic saves make
    assert result.saved == [str(copy)] and hypernet.load(copy).step == 2


def test_empty_dataset_fails_before_any_model_work(pipes, tmp_path, monkeypatch):
    host = DiffusersHost(pipes["sd1"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    monkeypatch.setattr(host, "encode_images", lambda *a: pytest.fail("encoded without data"))
    with pytest.raises(DatasetError, match="no images found"):
        train(host, opts(empty, tmp_path), hypernet.create(dims=host.model_dims()), show_progress=False)


def test_widths_that_miss_the_model_are_refused(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    with pytest.raises(HypernetError, match="--dims"):
        train(host, opts(data_dir, tmp_path), hypernet.create(dims=[768, 320]), show_progress=False)


def test_gradient_checkpointing_matches_plain_training(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    create = CreateOptions(name="ckpt", dims=host.model_dims())
    plain = train(host, opts(data_dir, tmp_path / "p", steps=2), create=create, show_progress=False)
    ckpt = train(host, opts(data_dir, tmp_path / "c", steps=2, gradient_checkpointing=True), create=create,
                 show_progress=False)
    a, b = state(hypernet.load(plain.output)), state(hypernet.load(ckpt.output))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    start = state(hypernet.create(dims=host.model_dims(), name="ckpt", seed=123))
    assert not same_state(start, b)  # gradients did reach the hypernetwork
    assert not host.unet.is_gradient_checkpointing


def test_clipping_and_other_optimizers_run(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    for extra in (dict(clip_grad_mode="norm", clip_grad_value="1e-9", learning_rate="1e-1", optimizer="SGD", weight_decay=0),
                  dict(clip_grad_mode="value", clip_grad_value="0.01:2, 0.001", optimizer="Adam",
                       min_snr_gamma=5, noise_offset=0.05, timestep_min=100, timestep_max=900, lr_warmup_steps=2,
                       lr_shape="cosine")):
        hn = hypernet.create(dims=host.model_dims(), seed=0)
        start = state(hn)
        train(host, opts(data_dir, tmp_path, steps=3, **extra), hn, show_progress=False)
        moved = max((state(hn)[k] - start[k]).abs().max().item() for k in start)
        if extra["clip_grad_mode"] == "norm":
            assert 0 < moved < 1e-8  # a 1e-9 norm clip keeps SGD's steps tiny even at lr 0.1
        else:
            assert moved > 0


# ---------------------------------------------------------------------------------------------- webui host
def test_webui_host_trains_the_ldm_unet_with_block_checkpointing(data_dir, tmp_path):
    from hypernet.hosts.webui import WebuiHost
    images = []
    host = WebuiHost(StandInLatentDiffusion("v"), sampler=lambda *a: images.append(a) or Image.new("RGB", (8, 8)))
    assert host.prediction_type == "v" and host.model_dims() == [32, 64]
    hn = hypernet.create(dims=host.model_dims(), name="ldm", seed=0)
    start = state(hn)
    unet_before = state(host.unet)
    result = train(host, opts(data_dir, tmp_path, steps=3, gradient_checkpointing=True, preview_every=3,
                              preview_prompt="p"), hn, show_progress=False)
    assert result.step == 3 and not same_state(start, state(hn))
    assert same_state(unet_before, state(host.unet))
    assert len(images) == 1 and images[0][0] == "p" and len(result.previews) == 1
    assert not any("forward" in vars(b) for b in host._checkpointing.blocks)  # checkpointing undone


@pytest.mark.parametrize("checkpointing", [True, False])
def test_forge_host_trains_forges_unet_through_its_kmodel(data_dir, tmp_path, checkpointing):
    """Forge's weights are inference tensors and its blocks add into their input in place; both are mimicked."""
    from hypernet.hosts.webui import ForgeHost, make_host
    from models import StandInForge, tiny_ldm_unet
    model = StandInForge(tiny_ldm_unet(context_dim=32), "v_prediction", text_encoder=tiny.pipeline("sd1", seed=3)
                         .text_encoder, tokenizer=tiny.tokenizer())
    host = make_host(model)
    assert isinstance(host, ForgeHost) and host.prediction_type == "v" and host.model_dims() == [32, 64]
    assert host.identity()["host"] == "forge"
    hn = hypernet.create(dims=host.model_dims(), name="forge", seed=0)
    start, unet_before = state(hn), state(host.unet)
    result = train(host, opts(data_dir, tmp_path, steps=3, gradient_checkpointing=checkpointing), hn,
                   show_progress=False)
    assert result.step == 3 and not same_state(start, state(hn))
    assert same_state(unet_before, state(host.unet))
    assert not any(t.is_inference() for t in host.kmodel.state_dict().values())
    norms = [getattr(m, n) for m in host.unet.modules() if hasattr(m, "attn1") for n in ("norm1", "norm2", "norm3")]
    assert norms and not any(norm._forward_pre_hooks for norm in norms)   # training's hooks are gone
    with torch.inference_mode():                          # Forge's generation afterwards, as before
        x = torch.randn(1, 4, 8, 8)
        out = host.unet(x, torch.tensor([10.0]), context=torch.randn(1, 77, 32), control=None,
                        transformer_options={})
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_releasing_inference_tensors_copies_one_at_a_time_and_keeps_values():
    from hypernet.hosts.webui import release_inference_tensors
    from models import as_inference_tensors
    module = as_inference_tensors(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ids = {name: id(p) for name, p in module.named_parameters()}
    assert release_inference_tensors(module) == 4
    assert all(torch.equal(before[k], v) and not v.is_inference() for k, v in module.state_dict().items())
    assert all(id(p) != ids[name] for name, p in module.named_parameters())   # the inference originals are let go
    assert release_inference_tensors(module) == 0


# ---------------------------------------------------------------------------------------------- command line
def test_cli_train_on_a_diffusers_folder(pipes, data_dir, tmp_path):
    model = tmp_path / "model"
    pipes["sd1"].save_pretrained(model)
    out = tmp_path / "cli.safetensors"
    cmd = [sys.executable, "-m", "hypernet", "train", "--model", str(model), "--data", str(data_dir), "--steps", "2",
           "--width", "64", "--height", "64", "--log-dir", str(tmp_path / "logs"), "--output", str(out),
           "--preview-every", "0", "--seed", "1", "--activation", "elu", "--name", "clistyle"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"completed at step 2: {out}" in r.stdout
    hn = hypernet.load(out)
    assert hn.name == "clistyle" and hn.config.activation == "elu" and hn.step == 2

    r = subprocess.run(cmd[:6] + ["--hypernetwork", str(out), "--layer-norm"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and "--layer-norm" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(cmd[:5] + [str(data_dir), "--data", str(data_dir)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "model_index.json" in r.stderr
    r = subprocess.run(cmd[:6] + ["--learning-rate", "fast"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "learning_rate" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_finishes_the_step_saves_and_exits_cleanly(pipes, data_dir, tmp_path):
    import re
    import signal
    model = tmp_path / "model"
    pipes["sd1"].save_pretrained(model)
    out = tmp_path / "sigint.pt"
    cmd = [sys.executable, "-m", "hypernet", "train", "--model", str(model), "--data", str(data_dir), "--steps",
           "100000", "--width", "64", "--height", "64", "--log-dir", str(tmp_path / "logs"), "--output", str(out),
           "--preview-every", "0", "--save-every", "0", "--log-every", "1", "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # block on the progress bar's own output until it shows at least 2 finished steps
    seen, done = "", 0
    while done < 2:
        char = proc.stderr.read(1)
        assert char, f"training ended before it started: {seen[-2000:]}"
        seen += char
        counts = re.findall(r"(\d+)/100000", seen[-200:])
        done = int(counts[-1]) if counts else 0
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    stderr = seen + stderr
    assert proc.returncode == 0, stderr[-2000:]
    assert "interrupted at step" in stdout and "Traceback" not in stderr
    saved = hypernet.load(out)
    assert 2 <= saved.step < 100000
    assert os.path.exists(str(out) + ".optim")


def test_an_incomplete_single_file_or_a_missing_model_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    from hypernet.hosts.diffusers import load_pipeline
    ckpt = tmp_path / "model.safetensors"   # a UNet weight alone (whole files: tests/test_single_file.py)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(ckpt))
    with pytest.raises(HypernetError, match="has no VAE"):
        load_pipeline(ckpt)
    with pytest.raises(HypernetError, match="not found"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(HypernetError, match=".safetensors or .ckpt"):
        load_pipeline(tmp_path / "weights.bin")


def test_tensorboard_option_needs_the_package_or_logs(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    hn = hypernet.create(dims=host.model_dims())
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(HypernetError, match="pip install tensorboard"):
            train(host, opts(data_dir, tmp_path, steps=1, tensorboard=True), hn, show_progress=False)
        return
    result = train(host, opts(data_dir, tmp_path, steps=2, tensorboard=True), hn, show_progress=False)
    assert list((Path(result.run_dir) / "tensorboard").iterdir())
