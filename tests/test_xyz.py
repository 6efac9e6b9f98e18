"""The "Hypernet strength" and "Hypernet file" axes in the webui's X/Y/Z plot, with the stand-in webui and script."""
import pytest
import torch

import hypernet
from hypernet.tags import with_file, with_strength
from test_webui import make as make_plain
from webui_stub.harness import stub_modules


@pytest.fixture
def webui(tmp_path):
    with stub_modules(tmp_path) as w:
        yield w


@pytest.fixture(scope="module")
def sd_model():
    from models import StandInLatentDiffusion
    model = StandInLatentDiffusion()
    torch.manual_seed(0)
    for module in model.model.diffusion_model.modules():  # ldm zero-initialises its output layers
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and not module.weight.abs().sum():
            torch.nn.init.normal_(module.weight, std=0.05)
    return model


def make(folder, rel, dims, seed):
    """A file whose effect survives the stand-in sampler's 8-bit output: weights far from a fresh file's."""
    path = make_plain(folder, rel, dims=dims, seed=seed)
    hn = hypernet.load(path)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in hn.parameters():
            param.normal_(0, 0.2)
    return hn.save(path, overwrite=True)


def xyz_of(w):
    from hypernet.webui.xyz import find_xyz_module
    return find_xyz_module()


def plot(w, prompt, x_label, x_values, y_label="Nothing", y_values="", **kw):
    xyz = xyz_of(w)
    p = w.processing.StableDiffusionProcessingTxt2Img(prompt=prompt, seed=4, steps=3, width=64, height=64)
    return xyz.Script().run(p, x_label, x_values, y_label, y_values, **kw)


def pixels(processed):
    return torch.tensor(list(processed.images[0].getdata()), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- prompt rewriting
def test_rewriting_tags_keeps_everything_else():
    assert with_strength("a <hypernet:x:0.5> b <hypernet:y:1:self=0.2> <lora:z:1>", 0.8) == (
        "a <hypernet:x:0.8> b <hypernet:y:0.8:self=0.2> <lora:z:1>", 2)
    assert with_strength("no tags", 2) == ("no tags", 0)
    assert with_file("a <hypernet:x:0.5> b <hypernet:y:1>", "run/x-500") == "a <hypernet:run/x-500:0.5> b <hypernet:y:1>"
    assert with_file("a cat", "x", 0.7) == "a cat <hypernet:x:0.7>"


# ---------------------------------------------------------------------------------------------- registration
def test_axes_are_registered_once_where_the_script_is(webui):
    webui.start()
    webui.script_callbacks.before_ui_callback()             # a UI reload runs before_ui again
    labels = [o.label for o in xyz_of(webui).axis_options]
    assert labels.count("Hypernet strength") == 1 and labels.count("Hypernet file") == 1
    assert labels[:2] == ["Nothing", "Seed"]                 # the script's own axes untouched
    file_axis = next(o for o in xyz_of(webui).axis_options if o.label == "Hypernet file")
    assert isinstance(file_axis, xyz_of(webui).AxisOption) and callable(file_axis.choices)


def test_without_the_script_nothing_breaks(webui):
    webui.start(xyz=False)
    from hypernet.webui.xyz import find_xyz_module, register_axes
    assert find_xyz_module() is None and register_axes() is False
    assert "hypernet" in webui.extra_networks.extra_network_registry


# ---------------------------------------------------------------------------------------------- sweeping
def test_strength_axis_sweeps_the_tag(webui, sd_model):
    make(webui.folder, "style.pt", dims=(32, 64), seed=3)
    webui.shared.sd_model = sd_model
    webui.start()
    cells, xs, _ = plot(webui, "a red square <hypernet:style:1>", "Hypernet strength", "0, 0.5, 1")
    prompts = [cells[(i, 0)][1] for i in range(3)]
    assert prompts == [f"a red square <hypernet:style:{s}>" for s in ("0", "0.5", "1")]
    assert xs == ["Hypernet strength: 0.0", "Hypernet strength: 0.5", "Hypernet strength: 1.0"]
    images = [pixels(cells[(i, 0)][0]) for i in range(3)]
    base = pixels(plot(webui, "a red square", "Nothing", "")[0][(0, 0)][0])
    assert torch.equal(images[0], base)                       # strength 0 is the model as loaded
    assert (images[1] - base).abs().max() > 0 and (images[2] - base).abs().sum() > (images[1] - base).abs().sum()
    assert "Hypernet hashes" in cells[(2, 0)][0].info


def test_bad_strengths_are_refused_before_any_image(webui, sd_model):
    webui.shared.sd_model = sd_model
    webui.start()
    calls = []
    # a float axis, so the script itself converts (and expands ranges such as "0-1 [5]"); the range is ours
    with pytest.raises(ValueError, match="could not convert string to float: 'loud'"):
        plot(webui, "a <hypernet:style:1>", "Hypernet strength", "0, loud", sample=lambda p: calls.append(p))
    with pytest.raises(Exception, match="strength 20.0 is outside -10..10"):
        plot(webui, "a <hypernet:style:1>", "Hypernet strength", "0, 20", sample=lambda p: calls.append(p))
    assert calls == []


def test_strength_without_a_tag_says_so_under_the_image(webui, sd_model):
    webui.shared.sd_model = sd_model
    webui.start()
    cells, _, _ = plot(webui, "a red square", "Hypernet strength", "1")
    assert "has no <hypernet:name> tag" in cells[(0, 0)][0].comments


def test_file_axis_sweeps_cards_and_a_runs_saved_copies(webui, sd_model, tmp_path):
    from hypernet.ui.actions import default_log_dir
    from hypernet.webui.state import get_state
    make(webui.folder, "card.pt", dims=(32, 64), seed=5)
    run = tmp_path / "webui-data" / "textual_inversion" / "2026-12-02" / "mine"
    run.mkdir(parents=True)
    (run / "settings.json").write_text("{}")
    for step in (500, 1000):
        make(run / "hypernetworks", f"mine-{step}.pt", dims=(32, 64), seed=step)
    webui.shared.sd_model = sd_model
    webui.start()
    assert default_log_dir(get_state()) == str(run.parent.parent)
    file_axis = next(o for o in xyz_of(webui).axis_options if o.label == "Hypernet file")
    assert file_axis.choices() == ["card", "2026-12-02/mine/mine-500", "2026-12-02/mine/mine-1000"]
    cells, xs, ys = plot(webui, "a red square", "Hypernet file", "", "Hypernet strength", "0.5, 1",
                         x_dropdown=file_axis.choices())
    assert xs == ["card", "2026-12-02/mine/mine-500", "2026-12-02/mine/mine-1000"]
    assert cells[(1, 1)][1] == "a red square <hypernet:2026-12-02/mine/mine-500:1>"
    images = {key: pixels(processed) for key, (processed, _) in cells.items()}
    assert len({tuple(v.flatten().tolist()) for v in images.values()}) == 6  # every file and strength differ
    assert "mine-500" in cells[(1, 1)][0].info                       # the hash of the copy in the infotext
    with pytest.raises(RuntimeError, match="no hypernetwork or saved copy called 'nope'"):
        plot(webui, "a red square", "Hypernet file", "nope")
    with pytest.raises(RuntimeError, match="no hypernetwork or saved copy"):  # nothing outside the log folder
        plot(webui, "a red square", "Hypernet file", str(run / "hypernetworks" / "mine-500"))
