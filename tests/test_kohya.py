"""What a kohya sd-scripts user looks for: clip skip, caption dropout, a prompts file, more optimizers and shapes,
keeping the last N copies, fp16 saves, a separate VAE and Weights & Biases, all on the tiny real pipelines."""
import random
import sys
import threading
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

import hypernet
from hypernet import HypernetError
from hypernet.tiny import model as tiny
from hypernet.config import ConfigError, CreateOptions, TrainOptions
from hypernet.hosts.diffusers import DiffusersHost
from hypernet.train.sample_prompts import parse_line, read_prompts
from hypernet.train.optimizers import build_optimizer
from hypernet.train.trainer import Trainer, train
from test_train import make_images, opts, same_state, state


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny.pipeline(kind, seed=1) for kind in ("sd1", "sdxl")}


# ---------------------------------------------------------------------------------------------- clip skip
def test_clip_skip_takes_the_nth_layer_from_the_end_through_the_final_norm(pipes):
    host = DiffusersHost(pipes["sd1"])
    te = host.text_encoders[0]
    ids = host._tokens(host.tokenizers[0], ["a red square"])
    out = te(ids, output_hidden_states=True)
    assert torch.equal(host.encode_prompts(["a red square"]), out[0])          # 0: the last layer
    host.clip_skip = 1
    assert torch.equal(host.encode_prompts(["a red square"]), out[0])          # 1 counts like the webui
    host.clip_skip = 2
    skipped = host.encode_prompts(["a red square"])
    assert torch.allclose(skipped, getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-2]))
    assert not torch.allclose(skipped, out[0])
    assert host._diffusers_clip_skip() == 1                                    # diffusers counts one less
    with pytest.raises(HypernetError, match="clip_skip"):
        host.clip_skip = te.config.num_hidden_layers + 1
    host.clip_skip = 0


def test_clip_skip_on_sdxl_keeps_the_penultimate_layer_up_to_2(pipes):
    host = DiffusersHost(pipes["sdxl"])
    plain = host.encode_prompts(["x"])["context"]
    host.clip_skip = 2
    assert torch.equal(host.encode_prompts(["x"])["context"], plain) and host._diffusers_clip_skip() is None
    layers = min(te.config.num_hidden_layers for te in host.text_encoders)
    if layers >= 3:
        host.clip_skip = 3
        assert not torch.equal(host.encode_prompts(["x"])["context"], plain) and host._diffusers_clip_skip() == 1
    host.clip_skip = 0


def test_training_with_clip_skip_differs_and_puts_the_host_back(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    create = CreateOptions(name="skip", dims=host.model_dims())
    a = train(host, opts(data_dir, tmp_path / "a", steps=2), create=create, show_progress=False)
    b = train(host, opts(data_dir, tmp_path / "b", steps=2, clip_skip=2, preview_every=2, preview_steps=1),
              create=create, show_progress=False)
    assert host.clip_skip == 0 and len(b.previews) == 1   # previews condition like training, through embeddings
    assert not same_state(state(hypernet.load(a.output)), state(hypernet.load(b.output)))


def test_webui_host_follows_the_webui_setting_and_overrides_it_only_while_it_encodes(monkeypatch):
    from hypernet.hosts.webui import WebuiHost
    seen = []
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(CLIP_stop_at_last_layers=1))
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(shared=shared))
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    host = WebuiHost.__new__(WebuiHost)
    host.device = torch.device("cpu")
    host.sd_model = types.SimpleNamespace(get_learned_conditioning=lambda texts: seen.append(
        shared.opts.CLIP_stop_at_last_layers) or torch.zeros(len(texts), 4, 8))
    host.encode_prompts(["a"])
    host.clip_skip = 2
    host.encode_prompts(["a"])
    assert seen == [1, 2] and shared.opts.CLIP_stop_at_last_layers == 1


# ---------------------------------------------------------------------------------------------- caption dropout
def test_caption_dropout_empties_whole_prompts_reproducibly(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    trainer = Trainer(host, opts(data_dir, tmp_path, caption_dropout=0.5), hypernet.create(dims=host.model_dims()),
                      show_progress=False)
    dataset = trainer._build_dataset()
    draw = lambda: [p for b, _ in zip(dataset.batches(4, random.Random(3)), range(20)) for p in b.prompts]  # noqa
    prompts = draw()
    assert prompts == draw()                                    # the same seed, the same prompts
    empty = prompts.count("")
    assert 0.3 < empty / len(prompts) < 0.7 and all(p == "" or "square" in p for p in prompts)
    assert not dataset.static_prompts and "" in dataset.possible_prompts()
    plain = Trainer(host, opts(data_dir, tmp_path), hypernet.create(dims=host.model_dims()), show_progress=False)
    assert "" not in [p for b, _ in zip(plain._build_dataset().batches(4, random.Random(3)), range(20))
                      for p in b.prompts]


# ---------------------------------------------------------------------------------------------- prompts file
def test_prompt_lines_read_kohyas_inline_options():
    p = parse_line("masterpiece, 1girl --n lowres, bad hands --w 512 --h 768 --s 28 --d 42 --l 7.5 --ss Euler a")
    assert (p.prompt, p.negative, p.width, p.height, p.steps, p.seed, p.cfg_scale, p.sampler) == (
        "masterpiece, 1girl", "lowres, bad hands", 512, 768, 28, 42, 7.5, "Euler a")
    assert parse_line("# a comment") is None and parse_line("   ") is None
    assert parse_line("just a prompt").negative is None
    with pytest.raises(ConfigError, match=r"preview_prompts_file.*--w 'wide' is not a number"):
        parse_line("x --w wide")
    with pytest.raises(ConfigError, match="multiple of 8"):
        parse_line("x --w 500")


def test_a_prompts_file_renders_every_line_at_every_preview(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# previews\na red square --d 5 --s 2 --w 64 --h 64\n\na blue square --n green --s 2 "
                       "--w 32 --h 64\n")
    calls = []
    real = host.sample
    host.sample = lambda *a, **k: calls.append(a) or real(*a, **k)
    result = train(host, opts(data_dir, tmp_path, steps=2, preview_every=1, preview_prompts_file=str(prompts)),
                   hypernet.create(dims=host.model_dims(), name="multi"), show_progress=False)
    run = Path(result.run_dir) / "images"
    assert sorted(p.name for p in run.glob("*.png")) == ["multi-1-0.png", "multi-1-1.png", "multi-2-0.png",
                                                         "multi-2-1.png"]
    assert len(result.previews) == 4 and Image.open(run / "multi-1-1.png").size == (32, 64)
    assert calls[0][:7] == ("a red square", "", 2, 7.0, 5, 64, 64) and calls[1][1] == "green"
    assert calls[2][4] == 5 and calls[1][4] == calls[3][4]  # a line's own seed, else one drawn per line and step
    assert (run / "multi-1-1.txt").read_text().startswith("a blue square\nnegative: green\nseed: ")


def test_a_bad_prompts_file_fails_before_any_model_work(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    with pytest.raises(ConfigError, match="preview_prompts_file.*cannot read"):
        Trainer(host, opts(data_dir, tmp_path, preview_prompts_file=str(tmp_path / "none.txt")),
                hypernet.create(dims=host.model_dims()), show_progress=False)
    (tmp_path / "only-comments.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        read_prompts(tmp_path / "only-comments.txt")


# ---------------------------------------------------------------------------------------------- optimizers
class _Recorder(torch.optim.SGD):
    calls: list = []

    def __init__(self, params, **kwargs):
        _Recorder.calls.append(kwargs)
        super().__init__(params, lr=kwargs["lr"])


@pytest.mark.parametrize("name, module, attr, expected", [
    ("Lion", "lion_pytorch", "Lion", {"betas": (0.9, 0.99), "weight_decay": 0.01}),
    ("Prodigy", "prodigyopt", "Prodigy", {"betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01}),
    ("Adafactor", "transformers.optimization", "Adafactor", {"relative_step": False, "scale_parameter": False}),
])
def test_optimizers_come_from_their_packages(monkeypatch, name, module, attr, expected):
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{attr: _Recorder}))
    _Recorder.calls = []
    o = TrainOptions(optimizer=name, beta2=0.99)
    optimizer = build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], o, 0.5)
    assert isinstance(optimizer, _Recorder) and _Recorder.calls[0]["lr"] == 0.5
    assert expected.items() <= _Recorder.calls[0].items()


def test_a_missing_optimizer_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)   # import fails as if not installed
    with pytest.raises(HypernetError, match="optimizer: Lion needs `pip install lion-pytorch`"):
        build_optimizer("Lion", [torch.nn.Parameter(torch.zeros(2))], TrainOptions(), 1e-4)


@pytest.mark.parametrize("name, package", [("Adafactor", "transformers"), ("Lion", "lion_pytorch"),
                                           ("Prodigy", "prodigyopt")])
def test_real_optimizer_packages_train_and_resume_exactly(pipes, data_dir, tmp_path, name, package):
    pytest.importorskip(package, reason=f"{package} is not installed (optional)")
    host = DiffusersHost(pipes["sd1"])
    create = CreateOptions(name=name.lower(), dims=host.model_dims())
    lr = "1.0" if name == "Prodigy" else "1e-3"
    kw = dict(optimizer=name, learning_rate=lr, lr_shape="cosine_with_restarts", lr_cycles=2)
    straight = train(host, opts(data_dir, tmp_path / "a", steps=4, **kw), create=create, show_progress=False)
    stop = threading.Event()   # stopped, not finished early: the shape depends on the run's total steps
    half = train(host, opts(data_dir, tmp_path / "b", steps=4, **kw), create=create, show_progress=False, stop=stop,
                 on_progress=lambda report: report.step == 2 and stop.set())
    assert half.stopped == "interrupted" and half.step == 2
    resumed = train(host, opts(data_dir, tmp_path / "b", steps=4, **kw), half.output, show_progress=False)
    a, b = state(hypernet.load(straight.output)), state(hypernet.load(resumed.output))
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert not same_state(a, state(hypernet.create(dims=host.model_dims(), name=name.lower(), seed=123)))


# ---------------------------------------------------------------------------------------------- saving
def test_keep_last_copies_removes_only_this_runs_older_copies(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    o = opts(data_dir, tmp_path, steps=5, save_every=1, keep_last_copies=2)
    trainer = Trainer(host, o, hypernet.create(dims=host.model_dims(), name="few"), show_progress=False)
    folder = trainer.run_dir / "hypernetworks"
    folder.mkdir(parents=True)
    (folder / "few-1000.pt").write_bytes(b"an older run's copy")     # not this run's: never removed
    result = trainer.run()
    assert sorted(p.name for p in folder.iterdir()) == ["few-1000.pt", "few-4.pt", "few-4.pt.optim", "few-5.pt",
                                                        "few-5.pt.optim"]
    assert Path(result.output).exists() and hypernet.load(result.output).step == 5


def test_fp16_saves_are_half_the_size_load_back_and_resume(pipes, data_dir, tmp_path):
    host = DiffusersHost(pipes["sd1"])
    create = CreateOptions(name="half", dims=host.model_dims())
    full = train(host, opts(data_dir, tmp_path / "f", steps=2), create=create, show_progress=False)
    half = train(host, opts(data_dir, tmp_path / "h", steps=2, save_precision="fp16"), create=create,
                 show_progress=False)
    assert Path(half.output).stat().st_size < 0.6 * Path(full.output).stat().st_size
    assert hypernet.webui_check(half.output) is None
    a, b = state(hypernet.load(full.output)), state(hypernet.load(half.output))
    assert all(b[k].dtype == torch.float32 and torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    resumed = train(host, opts(data_dir, tmp_path / "h", steps=4, save_precision="fp16"), half.output,
                    show_progress=False)
    assert resumed.start_step == 2 and hypernet.load(resumed.output).step == 4
    optim = torch.load(half.output + ".optim", weights_only=True)["optimizer_state_dict"]
    assert all(v["exp_avg"].dtype == torch.float32 for v in optim["state"].values())  # the optimizer stays fp32


# ---------------------------------------------------------------------------------------------- a separate VAE
def test_a_separate_vae_folder_or_file_encodes_the_images(pipes, data_dir, tmp_path):
    from safetensors.torch import save_file
    host = DiffusersHost(pipes["sd1"])
    other = tiny.pipeline("sd1", seed=7).vae
    other.save_pretrained(tmp_path / "vae")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    own = host.vae
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    for source in (tmp_path / "vae", tmp_path / "vae.safetensors"):
        previous = host.use_vae(source)
        assert torch.allclose(host.encode_images(pixels)[0], (other.encode(pixels).latent_dist.mean
                                                               * host.scaling_factor))
        host.use_vae(previous)
    assert host.vae is own and host.pipe.vae is own
    result = train(host, opts(data_dir, tmp_path, steps=1, vae=str(tmp_path / "vae")),
                   hypernet.create(dims=host.model_dims()), show_progress=False)
    assert result.step == 1 and host.vae is own                      # the trainer puts the model's VAE back


def test_an_ldm_layout_vae_file_is_converted(pipes, tmp_path):
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING  # noqa: F401 (the converter's table)
    from safetensors.torch import save_file
    from hypernet.hosts.vae import load_vae
    host = DiffusersHost(pipes["sd1"])
    ldm = {"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}
    save_file(ldm, str(tmp_path / "ldm.safetensors"))
    with pytest.raises(HypernetError, match="does not fit this model's VAE"):
        load_vae(tmp_path / "ldm.safetensors", like=host.vae)      # converted, then found incomplete
    with pytest.raises(HypernetError, match="vae: .* not found"):
        load_vae(tmp_path / "missing", like=host.vae)
    (tmp_path / "vae.ckpt").write_bytes(b"x")
    with pytest.raises(HypernetError, match="not a .safetensors"):
        load_vae(tmp_path / "vae.ckpt", like=host.vae)


# ---------------------------------------------------------------------------------------------- W&B
def test_weights_and_biases_logs_through_the_wandb_package(pipes, data_dir, tmp_path, monkeypatch):
    events = []

    class Run:
        def log(self, data, step):
            events.append(("log", sorted(data), step))

        def finish(self):
            events.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: events.append(("init", kw)) or Run(),
                                 Image=lambda path, caption=None: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    host = DiffusersHost(pipes["sd1"])
    result = train(host, opts(data_dir, tmp_path, steps=2, wandb=True, wandb_project="proj", preview_every=2,
                              preview_steps=1), hypernet.create(dims=host.model_dims(), name="wb"),
                   show_progress=False)
    init = events[0][1]
    assert init["project"] == "proj" and init["dir"] == result.run_dir and init["config"]["steps"] == 2
    assert ("log", ["learn_rate", "loss"], 1) in events and ("log", ["preview"], 2) in events
    assert ("log", ["prompt_kept", "style"], 0) in events and ("log", ["suggested_step"], 2) in events
    assert events[-1] == ("finish",)


def test_weights_and_biases_without_the_package_is_a_clear_error(pipes, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    host = DiffusersHost(pipes["sd1"])
    with pytest.raises(HypernetError, match="pip install wandb"):
        train(host, opts(data_dir, tmp_path, steps=1, wandb=True), hypernet.create(dims=host.model_dims()),
              show_progress=False)


# ---------------------------------------------------------------------------------------------- one place
NEW_FIELDS = ("caption_dropout", "vae", "clip_skip", "lr_cycles", "lr_power", "keep_last_copies", "save_precision",
              "wandb", "wandb_project", "preview_prompts_file")


def test_each_new_option_shows_in_the_cli_the_tabs_the_api_and_settings(pipes, data_dir, tmp_path):
    import dataclasses
    from hypernet.apps.cli import build_parser
    from hypernet.ui import tabs
    from hypernet.webui.api import build_models
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    helptext = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    _, request = build_models()
    schema = request.model_json_schema() if hasattr(request, "model_json_schema") else request.schema()
    for name in NEW_FIELDS:
        assert fields[name].metadata["help"] and fields[name].metadata["group"] in dict(tabs.GROUPS), name
        assert "--" + name.replace("_", "-") in helptext, name
        assert name in tabs.TRAIN_OPTION_FIELDS and name in schema["properties"], name
    host = DiffusersHost(pipes["sd1"])
    result = train(host, opts(data_dir, tmp_path, steps=1, caption_dropout=0.1, save_precision="fp16"),
                   hypernet.create(dims=host.model_dims()), show_progress=False)
    import json
    saved = json.loads((Path(result.run_dir) / "settings.json").read_text())["options"]
    assert saved["caption_dropout"] == 0.1 and saved["save_precision"] == "fp16" and set(NEW_FIELDS) <= set(saved)


# ---------------------------------------------------------------------------------------------- run files
@pytest.fixture(scope="module")
def model_dir(pipes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    pipes["sd1"].save_pretrained(folder)
    return folder


def test_a_toml_run_file_trains_and_flags_override_it(model_dir, data_dir, tmp_path, capsys):
    from hypernet.apps.cli import main
    run = tmp_path / "run.toml"
    run.write_text(f'''# every option by its name; tables only group them
model = "{model_dir}"
data = "{data_dir}"
name = "fromfile"

[images]
width = 64
height = 64
caption-dropout = 0.1

[train]
steps = 3
learning_rate = 1e-3
lr_shape = "polynomial"
seed = 5

[output]
log_dir = "{tmp_path / 'logs'}"
output = "{tmp_path / 'fromfile.pt'}"
save_every = 0
preview_every = 0
save_precision = "fp16"
''')
    assert main(["train", "--config", str(run), "--steps", "2"]) == 0, capsys.readouterr().err
    hn = hypernet.load(tmp_path / "fromfile.pt")
    assert hn.name == "fromfile" and hn.step == 2                      # the flag beat the file's steps = 3
    settings = next((tmp_path / "logs").rglob("settings.json"))
    import json
    recorded = json.loads(settings.read_text())
    assert recorded["options"]["caption_dropout"] == 0.1 and recorded["options"]["lr_shape"] == "polynomial"

    # the run folder's settings.json repeats the run: same seed, same data, same result
    again = tmp_path / "again.pt"
    assert main(["train", "--config", str(settings), "--output", str(again), "--log-dir",
                 str(tmp_path / "logs2")]) == 0, capsys.readouterr().err
    assert same_state(state(hn), state(hypernet.load(again)))


def test_dump_config_writes_what_config_reads(model_dir, data_dir, tmp_path, capsys):
    from hypernet.apps.cli import main
    from hypernet.train.config_file import read_config
    from hypernet.apps.cli import _train_keys
    for suffix in (".toml", ".json"):
        dumped = tmp_path / f"dumped{suffix}"
        assert main(["train", "--model", str(model_dir), "--data", str(data_dir), "--steps", "7", "--flip",
                     "--learning-rate", "1e-4:3, 1e-5", "--layer-structure", "1, 1.5, 1",
                     "--dump-config", str(dumped)]) == 0
        assert "--config" in capsys.readouterr().out and not (tmp_path / "logs").exists()
        values = read_config(dumped, _train_keys())
        assert values["steps"] == 7 and values["flip"] is True and values["learning_rate"] == "1e-4:3, 1e-5"
        assert values["model"] == str(model_dir) and values["layer_structure"] == "1, 1.5, 1"
        assert TrainOptions(**{k: v for k, v in values.items() if k in TrainOptions.__dataclass_fields__}) == \
            TrainOptions(data=str(data_dir), steps=7, flip=True, learning_rate="1e-4:3, 1e-5")


@pytest.mark.parametrize("text, words", [
    ('stepz = 3', "unknown option(s) stepz"),
    ('steps = "many"', "steps: expected a whole number"),
    ('model_kind = "flux"', "model_kind: unknown value 'flux'"),
    ('steps = 3\n[train]\nsteps = 4', "steps is given twice"),
    ('steps = ', "not valid TOML"),
])
def test_run_file_mistakes_are_one_line_errors_naming_the_key(data_dir, model_dir, tmp_path, capsys, text, words):
    from hypernet.apps.cli import main
    run = tmp_path / "bad.toml"
    run.write_text(f'data = "{data_dir}"\nmodel = "{model_dir}"\n{text}\n')
    assert main(["train", "--config", str(run)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_without_a_model_anywhere_the_error_says_where_to_give_it(data_dir, tmp_path, capsys):
    from hypernet.apps.cli import main
    assert main(["train", "--data", str(data_dir)]) == 2
    assert "--model" in capsys.readouterr().err
