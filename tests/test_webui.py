"""The webui integration (hypernet/webui) against a stand-in of the webui's `modules` and real tiny UNets:
registration, the <hypernet:...> tag handler, warnings, infotext, the cards page, settings."""
import json
import logging
import os
import sys

import pytest
import torch

import hypernet
from hypernet.errors import UnsafeFileError
from models import call_unet, tiny_diffusers_unet, tiny_ldm_unet, unet_inputs
from webui_stub.harness import stub_modules

SD1_DIMS = [32, 64, 768]   # the tiny ldm UNet: self-attention 32/64, cross-attention 768 (as SD1)


@pytest.fixture
def webui(tmp_path):
    with stub_modules(tmp_path) as w:
        yield w


class StandInModel(torch.nn.Module):
    """The part of a webui model the tag handler uses: the UNet at .model.diffusion_model."""

    def __init__(self, unet):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet


@pytest.fixture(scope="module")
def sd1_unet():
    unet = tiny_ldm_unet(context_dim=768)
    yield unet
    hypernet.detach(unet)


@pytest.fixture(scope="module")
def sdxl_unet():
    unet = tiny_diffusers_unet("sdxl")
    yield unet
    hypernet.detach(unet)


def make(folder, rel, dims=SD1_DIMS, seed=0, **kwargs):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return hypernet.create(dims=dims, seed=seed, name=kwargs.pop("name", path.stem), **kwargs).save(path)


def output(unet):
    with torch.no_grad():
        return call_unet(unet, **unet_inputs(unet, batch=1, seed=0))


def generate(w, prompt, unet, **kwargs):
    """One pretend txt2img run: tags parsed and activated as the webui does, the UNet run once per batch."""
    p = w.processing.StableDiffusionProcessingTxt2Img(prompt=prompt, **kwargs)
    return p, w.processing.process_images(p, lambda p: output(unet))


def params(w, *items):
    return [w.extra_networks.ExtraNetworkParams(items=list(i)) for i in items]


def hypernet_logs(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "hypernet" and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------- registration
def test_registering_replaces_the_builtin_network_and_page(webui):
    webui.start()
    network = webui.extra_networks.extra_network_registry["hypernet"]
    assert type(network).__module__ == "hypernet.webui.network"
    pages = webui.ui_extra_networks.extra_pages
    assert [p.title for p in pages] == ["Textual Inversion", "Hypernetworks", "Checkpoints"]  # same tab position
    assert type(pages[1]).__module__ == "hypernet.webui.page"
    assert str(webui.folder) in webui.ui_extra_networks.allowed_dirs
    registered = {k: len(v) for k, v in webui.script_callbacks.callback_map.items()}
    for category in ("before_ui", "ui_settings", "infotext_pasted", "app_started", "model_loaded",
                     "script_unloaded"):
        assert registered[f"callbacks_{category}"] == 1, category
    labels = webui.shared.opts.data_labels
    assert labels["hypernet_save_format"].section == ("hypernet", "Hypernet")
    assert "(empty: &lt;webui data folder&gt;/textual_inversion" in labels["hypernet_log_dir"].comment_after
    assert labels["hypernet_cache_size"].category_id == "sd"


def test_the_builtin_path_never_applies_anything(webui, sd1_unet):
    make(webui.folder, "style.pt")
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    webui.shared.loaded_hypernetworks.append("left over from the built-in trainer")
    p, processed = generate(webui, "a cat <hypernet:style:1>", sd1_unet)
    assert webui.shared.loaded_hypernetworks == []
    assert "style" in webui.shared.hypernetworks  # the webui's own list is kept up to date, not used


# ---------------------------------------------------------------------------------------------- the tag
def test_activate_attaches_a_stack_and_strength_scales_it(webui, sd1_unet):
    a = make(webui.folder, "name.pt", seed=1)
    b = make(webui.folder, "sub/other.safetensors", seed=2)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    network = webui.extra_networks.extra_network_registry["hypernet"]
    base = output(sd1_unet)

    with hypernet.attach(sd1_unet, [(hypernet.load(a), 0.7), (hypernet.load(b), {"all": 0.5, "self": 0.0})],
                         warn=False):
        reference = output(sd1_unet)
    p = webui.processing.StableDiffusionProcessingTxt2Img(prompt="x")
    network.activate(p, params(webui, ["name", "0.7"], ["other", "0.5", "self=0"]))
    stacked = output(sd1_unet)
    assert torch.equal(stacked, reference) and not torch.equal(stacked, base)
    from hypernet.webui.state import get_state
    assert [(a.name, a.strength) for a in get_state().applied] == [("name", 0.7),
                                                                  ("other", {"all": 0.5, "self": 0.0})]

    network.activate(p, params(webui, ["name", "0.35"], ["other", "0.5", "self=0"]))
    weaker = output(sd1_unet)
    assert not torch.equal(weaker, stacked) and not torch.equal(weaker, base)
    assert (weaker - base).abs().sum() < (stacked - base).abs().sum()

    network.activate(p, params(webui, ["name", "0"], ["other", "0"]))
    assert torch.equal(output(sd1_unet), base)      # strength 0 is exactly the image without it
    network.activate(p, params(webui, ["name", "1"]))
    assert not torch.equal(output(sd1_unet), base)
    network.deactivate(p)
    assert torch.equal(output(sd1_unet), base)      # deactivate unhooks
    network.activate(p, params(webui, ["name", "1"]))
    network.activate(p, [])
    assert torch.equal(output(sd1_unet), base)      # an empty list removes the hooks too
    assert p.comments == {}


@pytest.mark.parametrize("host", ["webui", "forge"])
def test_a_generation_strips_the_tag_and_leaves_the_unet_as_it_was(webui, sd1_unet, host):
    """Forge registers the same extra network API, but its model keeps the UNet in forge_objects."""
    from models import StandInForge
    make(webui.folder, "waterElemental_10.pt", seed=3)
    if host == "forge":  # a UNet of its own: the stand-in turns its weights into inference tensors, as Forge has them
        sd1_unet = tiny_ldm_unet(context_dim=768)
    webui.shared.sd_model = StandInModel(sd1_unet) if host == "webui" else StandInForge(sd1_unet)
    webui.start()
    base = output(sd1_unet)
    p, processed = generate(webui, "water elemental woman <hypernet:waterElemental_10:0.7>", sd1_unet)
    assert processed.prompts_seen == [["water elemental woman "]]
    assert "<hypernet:waterElemental_10:0.7>" in p.all_prompts[0]   # kept for the infotext
    assert not torch.equal(processed.outputs[0], base)
    assert torch.equal(output(sd1_unet), base)                      # deactivated at the end
    _, zero = generate(webui, "water elemental woman <hypernet:waterElemental_10:0>", sd1_unet)
    assert torch.equal(zero.outputs[0], base)
    assert zero.comments == ""


def test_a_tag_without_strength_uses_the_default_strength_setting(webui, sd1_unet):
    make(webui.folder, "style.pt", seed=4)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    _, full = generate(webui, "<hypernet:style:1>", sd1_unet)
    _, bare = generate(webui, "<hypernet:style>", sd1_unet)
    assert torch.equal(full.outputs[0], bare.outputs[0])
    webui.shared.opts.hypernet_default_strength = 0.0
    _, bare = generate(webui, "<hypernet:style>", sd1_unet)
    assert torch.equal(bare.outputs[0], output(sd1_unet))


def test_unknown_name_is_a_visible_warning_and_the_rest_still_applies(webui, sd1_unet, caplog):
    make(webui.folder, "style.pt", seed=5)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    base = output(sd1_unet)
    with caplog.at_level(logging.WARNING, logger="hypernet"):
        p, processed = generate(webui, "a cat <hypernet:styel:1> <hypernet:style:1>", sd1_unet, n_iter=2)
    assert "no hypernetwork named 'styel'" in processed.comments and "Did you mean style?" in processed.comments
    logged = [m for m in hypernet_logs(caplog) if "styel" in m]
    assert len(logged) == 1            # once per generation, not once per batch
    assert not torch.equal(processed.outputs[0], base)


def test_bad_strength_is_a_visible_warning(webui, sd1_unet, caplog):
    make(webui.folder, "style.pt", seed=6)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    with caplog.at_level(logging.WARNING, logger="hypernet"):
        _, processed = generate(webui, "a cat <hypernet:style:strong>", sd1_unet)
    assert "<hypernet:style:strong>" in processed.comments and "not a number" in processed.comments
    assert any("not a number" in m for m in hypernet_logs(caplog))
    assert torch.equal(processed.outputs[0], output(sd1_unet))


def test_unreadable_file_is_a_visible_warning(webui, sd1_unet):
    (webui.folder / "broken.pt").write_bytes(b"not a torch file")
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    _, processed = generate(webui, "<hypernet:broken:1>", sd1_unet)
    assert "<hypernet:broken:1> not applied" in processed.comments and "broken.pt" in processed.comments


def test_sd1_file_on_sdxl_warns_that_it_only_reaches_self_attention(webui, sdxl_unet, caplog):
    make(webui.folder, "sd1style.pt", dims=[64, 768], seed=7, name="style")   # a saved copy keeps its run's name
    webui.shared.sd_model = StandInModel(sdxl_unet)
    webui.start()
    base = output(sdxl_unet)
    with caplog.at_level(logging.WARNING, logger="hypernet"):
        _, processed = generate(webui, "<hypernet:sd1style:1>", sdxl_unet)
    assert "made for SD1" in processed.comments and "only reaches self-attention" in processed.comments
    assert "'sd1style'" in processed.comments and "'style'" not in processed.comments   # the name the tag wrote
    assert any("only reaches self-attention" in m for m in hypernet_logs(caplog))
    assert not torch.equal(processed.outputs[0], base)   # applied all the same, as the webui does
    card = webui.ui_extra_networks.extra_pages[1].create_item("sd1style")
    assert card["metadata"]["fits"] is False and "only reaches self-attention" in card["description"]

    webui.shared.opts.hypernet_warn_width_mismatch = False
    _, processed = generate(webui, "<hypernet:sd1style:1>", sdxl_unet)
    assert processed.comments == ""


def test_add_hypernetwork_to_prompt_setting(webui, sd1_unet):
    make(webui.folder, "always.safetensors", seed=8)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    assert webui.shared.opts.data_labels["sd_hypernetwork"].component_args()["choices"] == ["None", "always"]
    webui.shared.opts.sd_hypernetwork = "always"
    webui.shared.opts.extra_networks_default_multiplier = 0.8
    base_p, processed = generate(webui, "a cat", sd1_unet, n_iter=2)
    assert base_p.all_prompts == ["a cat<hypernet:always:0.8>"] * 2     # added once, shown in the infotext
    with hypernet.attach(sd1_unet, [(hypernet.load(webui.folder / "always.safetensors"), 0.8)], warn=False):
        expected = output(sd1_unet)
    assert all(torch.equal(o, expected) for o in processed.outputs)
    p, processed = generate(webui, "a cat <hypernet:always:0.2>", sd1_unet)
    assert p.all_prompts == ["a cat <hypernet:always:0.2>"]             # already there: left alone

    webui.shared.opts.sd_hypernetwork = "missing"
    p, processed = generate(webui, "a cat", sd1_unet)
    assert p.all_prompts == ["a cat"] and torch.equal(processed.outputs[0], output(sd1_unet))


# ---------------------------------------------------------------------------------------------- infotext
def test_infotext_records_hashes_and_pasting_restores_them(webui, sd1_unet):
    a = make(webui.folder, "name.pt", seed=9)
    b = make(webui.folder, "other.safetensors", seed=10)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    _, processed = generate(webui, "a cat <hypernet:name:0.7> <hypernet:other:0.5>", sd1_unet)
    short_a, short_b = hypernet.shorthash(a), hypernet.shorthash(b)
    assert f'Hypernet hashes: "name: {short_a}, other: {short_b}"' in processed.info

    pasted = webui.infotext_utils.paste(processed.info)
    assert pasted["Prompt"] == "a cat <hypernet:name:0.7> <hypernet:other:0.5>"
    os.rename(a, webui.folder / "renamed.pt")
    pasted = webui.infotext_utils.paste(processed.info)
    assert pasted["Prompt"] == "a cat <hypernet:renamed:0.7> <hypernet:other:0.5>"
    os.remove(b)
    pasted = webui.infotext_utils.paste(processed.info)
    assert "<hypernet:other:0.5>" in pasted["Prompt"]      # no file with that hash: the tag stays as written


def test_hashes_are_not_written_when_the_setting_is_off(webui, sd1_unet):
    make(webui.folder, "name.pt", seed=9)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    webui.shared.opts.hypernet_infotext_hashes = False
    _, processed = generate(webui, "<hypernet:name:0.7>", sd1_unet)
    assert "Hypernet hashes" not in processed.info


def test_legacy_infotext_fields_become_a_tag_once(webui):
    path = make(webui.folder, "oldstyle.pt", seed=11)
    webui.start()
    legacy = "a house\nSteps: 20, Seed: 1, Hypernet: oldstyle, Hypernet strength: 0.6"
    assert webui.infotext_utils.paste(legacy)["Prompt"] == "a house<hypernet:oldstyle:0.6>"
    no_strength = "a house\nSteps: 20, Seed: 1, Hypernet: oldstyle"
    assert webui.infotext_utils.paste(no_strength)["Prompt"] == "a house<hypernet:oldstyle:1.0>"

    from hypernet.webui.infotext import on_infotext_pasted
    params = {"Prompt": "a house", "Hypernet": "oldstyle", "Hypernet strength": "0.6"}  # a webui that adds nothing
    on_infotext_pasted("", params)
    assert params["Prompt"] == "a house<hypernet:oldstyle:0.6>"

    short = hypernet.shorthash(path)
    os.rename(path, webui.folder / "newname.pt")
    with_hash = f"a house\nSteps: 20, Seed: 1, Hypernet: oldstyle, Hypernet hash: {short}"
    assert webui.infotext_utils.paste(with_hash)["Prompt"] == "a house<hypernet:newname:1.0>"


def test_parse_hashes_field():
    from hypernet.webui.infotext import parse_hashes
    assert parse_hashes("a: 0123456789, b b: ABCDEF0123,bad, c:xyz") == {"a": "0123456789", "b b": "abcdef0123"}


# ---------------------------------------------------------------------------------------------- cards page
def card_files(folder):
    make(folder, "alpha.pt", seed=1, activation="elu", layer_structure=[1, 1.5, 1])
    make(folder, "sub/beta.safetensors", seed=2, layer_norm=True)
    make(folder, "sub/deeper/gamma.pt", dims=[1024], seed=3)
    (folder / "alpha.txt").write_text("from the txt file")
    (folder / "sub" / "beta.json").write_text(json.dumps({"description": "from the json file"}))
    (folder / "alpha.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def test_page_lists_pt_and_safetensors_recursively_with_card_fields(webui, sd1_unet):
    card_files(webui.folder)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    page = webui.ui_extra_networks.extra_pages[1]
    assert page.title == "Hypernetworks"
    page.refresh()
    html = page.create_html("txt2img")                     # renders: no None where the webui quotes
    assert "search_terms" in html
    items = {i["name"]: i for i in page.list_items()}
    assert list(items) == ["alpha", "beta", "gamma"]
    for name, item in items.items():
        for key in ("name", "filename", "shorthash", "preview", "description", "prompt", "local_preview"):
            assert isinstance(item[key], str), (name, key)
        assert item["prompt"] == f'"<hypernet:{name}:" + opts.extra_networks_default_multiplier + ">"'
        assert item["local_preview"].endswith(f"{name}.preview.png")
        assert set(item["sort_keys"]) >= {"default", "name", "path", "date_created", "date_modified"}
        json.dumps(item["metadata"])                       # the metadata popup shows it as JSON
    alpha, beta, gamma = items["alpha"], items["beta"], items["gamma"]
    assert alpha["description"] == "from the txt file" and beta["description"] == "from the json file"
    assert "alpha.preview.png" in alpha["preview"] and beta["preview"] == ""
    assert alpha["search_terms"][0] == os.path.join("hypernetworks", "alpha.pt")
    assert beta["search_terms"][0] == os.path.join("hypernetworks", "sub", "beta.safetensors")
    assert alpha["metadata"]["dims"] == SD1_DIMS and alpha["metadata"]["activation"] == "elu"
    assert alpha["metadata"]["layer_structure"] == [1.0, 1.5, 1.0] and alpha["metadata"]["step"] == 0
    assert beta["metadata"]["layer_norm"] is True and beta["metadata"]["format"] == "safetensors"
    assert alpha["metadata"]["made_for"] == "SD1" and gamma["metadata"]["made_for"] == "SD2"
    assert alpha["metadata"]["fits"] is True and gamma["metadata"]["fits"] is False
    assert "applies nothing to this model" in gamma["metadata"]["fit_note"]
    assert json.loads(webui.ui_extra_networks.get_metadata("hypernetworks", "alpha")["metadata"])["dims"] == SD1_DIMS
    from hypernet.webui.state import get_state
    assert get_state().library.cached_paths() == []        # cards read headers only, no network was loaded

    webui.shared.opts.hypernet_hide_unfit = True
    assert [i["name"] for i in page.list_items()] == ["alpha", "beta"]
    assert page.create_item("gamma", enable_filter=False)["name"] == "gamma"   # get_single_card's call


def test_card_hashes_come_from_the_cache_unless_asked_to_compute(webui, sd1_unet):
    path = make(webui.folder, "alpha.pt", seed=1)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    page = webui.ui_extra_networks.extra_pages[1]
    assert next(page.list_items())["shorthash"] == ""
    assert webui.hashes.computed == []
    generate(webui, "<hypernet:alpha:1>", sd1_unet)          # using it hashes it (for the infotext)
    card = next(page.list_items())
    assert card["shorthash"] == hypernet.shorthash(path) and hypernet.fileformat.files.sha256_file(path) in card["search_terms"]
    assert webui.hashes.cache["hypernet/alpha"]["sha256"] == hypernet.fileformat.files.sha256_file(path)  # the webui's cache
    other = make(webui.folder, "beta.pt", seed=2)
    page.refresh()                                           # the page's refresh button
    assert {c["name"]: c["shorthash"] for c in page.list_items()}["beta"] == ""
    webui.shared.opts.hypernet_card_hashes = True
    cards = {c["name"]: c for c in page.list_items()}
    assert cards["beta"]["shorthash"] == hypernet.shorthash(other)


def test_cards_and_tags_for_the_same_stem_in_two_folders(webui, sd1_unet):
    make(webui.folder, "x/dup.pt", seed=1)
    make(webui.folder, "y/dup.pt", seed=2)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    page = webui.ui_extra_networks.extra_pages[1]
    names = [i["name"] for i in page.list_items()]
    assert names == ["x/dup", "y/dup"]
    _, processed = generate(webui, "<hypernet:y/dup:1>", sd1_unet)
    assert processed.comments == ""
    with hypernet.attach(sd1_unet, [(hypernet.load(webui.folder / "y" / "dup.pt"), 1.0)], warn=False):
        assert torch.equal(processed.outputs[0], output(sd1_unet))
    _, processed = generate(webui, "<hypernet:dup:1>", sd1_unet)
    assert "ambiguous" in processed.comments


def test_page_without_a_loaded_model(webui):
    make(webui.folder, "alpha.pt")
    webui.start()
    item = next(webui.ui_extra_networks.extra_pages[1].list_items())
    assert item["metadata"]["fits"] is None and item["metadata"]["dims"] == SD1_DIMS
    assert webui.sd_models.model_data.get_calls == 0       # listing cards never loads a checkpoint


def test_a_file_added_after_start_is_found_without_refresh(webui, sd1_unet):
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    generate(webui, "warm up", sd1_unet)
    make(webui.folder, "late.pt", seed=12)
    _, processed = generate(webui, "<hypernet:late:1>", sd1_unet)
    assert processed.comments == "" and not torch.equal(processed.outputs[0], output(sd1_unet))


# ---------------------------------------------------------------------------------------------- file metadata
def test_header_metadata_matches_a_full_load(fixtures_dir, tmp_path):
    from hypernet.ui import metadata
    files = sorted(fixtures_dir.glob("*.pt"))
    st = tmp_path / "converted.safetensors"
    hypernet.load(files[0]).save(st)
    legacy = tmp_path / "legacy_format.pt"
    torch.save(torch.load(files[0], weights_only=True), legacy, _use_new_zipfile_serialization=False)
    for path in files + [st, legacy]:
        assert metadata.read(str(path)) == metadata.from_hypernetwork(hypernet.load(path)), path.name


def test_header_reader_refuses_code(tmp_path):
    from hypernet.ui import metadata

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pt"
    torch.save({768: ({}, {}), "name": Evil()}, path)
    with pytest.raises(UnsafeFileError, match="may be malicious .*system"):
        metadata.read(str(path))


# ---------------------------------------------------------------------------------------------- settings, lifecycle
def test_settings_fall_back_to_defaults(webui):
    from hypernet.ui.settings import value
    assert value("cache_size") == 4 and value("save_format") == ".pt"   # not registered yet
    webui.start()
    webui.shared.opts.hypernet_cache_size = "2"
    webui.shared.opts.hypernet_save_format = ".ckpt"
    assert value("cache_size") == 2 and value("save_format") == ".pt"
    webui.shared.opts.hypernet_cache_size = -3
    assert value("cache_size") == 0
    from hypernet.webui.state import get_state
    assert get_state().library.cache_size == 0


def test_every_setting_gets_a_component_on_the_settings_page(webui):
    """The webui stops at start-up on an option it cannot build a component for (a bare float default, say)."""
    gr = pytest.importorskip("gradio")
    from hypernet.ui.settings import SETTINGS
    from hypernet.webui.settings import PREFIX
    from modules import ui_settings
    webui.start()
    with gr.Blocks():
        for key in SETTINGS:
            component = ui_settings.create_setting_component(PREFIX + key)
            assert component.value == SETTINGS[key].default, key


def test_unloading_unhooks_and_restores_the_dropdown(webui, sd1_unet):
    make(webui.folder, "style.pt", seed=13)
    webui.shared.sd_model = StandInModel(sd1_unet)
    original = webui.shared.opts.data_labels["sd_hypernetwork"].component_args
    webui.start()
    assert webui.shared.opts.data_labels["sd_hypernetwork"].component_args is not original
    network = webui.extra_networks.extra_network_registry["hypernet"]
    base = output(sd1_unet)
    network.activate(webui.processing.StableDiffusionProcessingTxt2Img(prompt="x"), params(webui, ["style", "1"]))
    assert not torch.equal(output(sd1_unet), base)
    webui.script_callbacks.script_unloaded_callback()
    assert torch.equal(output(sd1_unet), base)
    assert webui.shared.opts.data_labels["sd_hypernetwork"].component_args is original


def test_loading_another_model_drops_the_hooks(webui, sd1_unet):
    make(webui.folder, "style.pt", seed=14)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    network = webui.extra_networks.extra_network_registry["hypernet"]
    base = output(sd1_unet)
    network.activate(webui.processing.StableDiffusionProcessingTxt2Img(prompt="x"), params(webui, ["style", "1"]))
    assert not torch.equal(output(sd1_unet), base)
    webui.script_callbacks.model_loaded_callback(webui.shared.sd_model)
    assert torch.equal(output(sd1_unet), base)


def test_no_model_loaded_is_a_warning_not_a_crash(webui):
    make(webui.folder, "style.pt")
    webui.start()
    p = webui.processing.StableDiffusionProcessingTxt2Img(prompt="x")
    webui.extra_networks.activate(p, {"hypernet": params(webui, ["style", "1"])})
    assert any("no model is loaded" in c for c in p.comments)
    assert webui.errors.exception_records == []


def test_warnings_reach_the_console_when_the_webui_configured_no_logging(webui, monkeypatch, capsys):
    from hypernet.webui import messages
    log = logging.getLogger("hypernet")
    before, level, propagate = list(log.handlers), log.level, log.propagate
    monkeypatch.setattr(logging.root, "handlers", [])       # the webui without --loglevel
    try:
        messages.ensure_console_handler()
        messages.ensure_console_handler()
        assert len([h for h in log.handlers if h not in before]) == 1
        # something configures the root logger afterwards (a library, or the webui itself): still printed once
        logging.root.handlers.append(logging.StreamHandler(sys.stderr))
        p = webui.processing.StableDiffusionProcessingTxt2Img(prompt="x")
        messages.warn(p, "no hypernetwork named 'typo'")
        messages.warn(p, "no hypernetwork named 'typo'")     # a second batch of the same generation
        err = capsys.readouterr().err
        assert err.count("[hypernet] WARNING: Hypernet: no hypernetwork named 'typo'") == 1
        assert list(p.comments) == ["Hypernet: no hypernetwork named 'typo'"]
    finally:
        log.handlers[:] = before
        log.setLevel(level)
        log.propagate = propagate


# ---------------------------------------------------------------------------------------------- the webui's checked torch.load
def _plain_torch_save(path, seed):
    """What a script or the webui's own Create button writes on a current torch: torch.save of the webui layout."""
    hn = hypernet.create(dims=SD1_DIMS, seed=seed, name=path.stem)
    with torch.no_grad():
        for p in hn.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    state = {dim: tuple(m.state_dict() for m in hn.modules_for(dim)) for dim in hn.dims}
    torch.save({**state, **hypernet.fileformat.files.metadata_dict(hn)}, path)
    return path


@pytest.fixture
def manifest_files(fixtures_dir):
    return json.loads((fixtures_dir / "manifest.json").read_text())["files"]


def test_files_the_webuis_own_loader_refuses_still_apply_inside_it(webui, sd1_unet, fixtures_dir, manifest_files):
    import shutil
    plain = _plain_torch_save(webui.folder / "plain_save.pt", seed=6)
    for name in manifest_files:
        shutil.copy(fixtures_dir / name, webui.folder / name)
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    assert torch.load(plain) is None                       # the stand-in refuses them as safe.py does
    assert torch.load(webui.folder / "relu_121.pt") is None
    base = output(sd1_unet)
    _, tagged = generate(webui, "a cat <hypernet:plain_save:1>", sd1_unet)
    assert tagged.comments == "" and not torch.equal(tagged.outputs[0], base)
    _, zero = generate(webui, "a cat <hypernet:plain_save:0>", sd1_unet)
    assert torch.equal(zero.outputs[0], base)
    cards = {i["name"]: i["metadata"] for i in webui.ui_extra_networks.extra_pages[1].list_items()}
    for name, facts in manifest_files.items():
        assert "error" not in cards[name[:-3]], cards[name[:-3]]
        assert cards[name[:-3]]["dims"] == facts["dims"]
    assert cards["plain_save"]["applies"] is True


def test_a_malicious_file_is_named_as_such_on_its_card_and_under_the_image(webui, sd1_unet, tmp_path, caplog):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({768: ({"linear.0.weight": Evil()}, {}), "name": "evil"}, webui.folder / "evil.pt")
    webui.shared.sd_model = StandInModel(sd1_unet)
    webui.start()
    page = webui.ui_extra_networks.extra_pages[1]
    caplog.set_level(logging.WARNING, logger="hypernet")
    for _ in range(3):                                     # start, a refresh, another listing
        page.refresh()
        card = next(page.list_items())
    assert "may be malicious" in card["metadata"]["fit_note"] and "nothing in it ran" in card["metadata"]["error"]
    assert "may be malicious" in card["description"]       # on the card's face, not only behind its ⓘ
    _, processed = generate(webui, "<hypernet:evil:1>", sd1_unet)
    assert "may be malicious" in processed.comments
    assert not (tmp_path / "ran").exists()
    lines = [m for m in hypernet_logs(caplog) if "evil.pt" in m]
    assert 1 <= len(lines) <= 2, lines                     # once for the card, once for the tag: no repeats
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"


def test_train_status_shows_what_the_data_notes_say(webui):
    from hypernet.ui import tabs
    html = tabs.status_html({"job_id": "j", "name": "style", "state": "running", "step": 1, "total": 5,
                             "notes": ["skipped 1 of 3 images: bad.png (not a readable image)"]})
    assert "Note: skipped 1 of 3 images: bad.png" in html


# ---------------------------------------------------------------------------------------------- Forge's model for training
def test_training_on_forge_before_any_generation_loads_the_model_as_forge_does(webui):
    """Forge holds a FakeInitialModel until its first generation; its txt2img calls forge_model_reload()."""
    from hypernet.errors import HypernetError
    from hypernet.webui.training import WebuiRuntime
    from models import StandInForge

    class FakeInitialModel:
        cond_stage_model = None

    webui.shared.sd_model = FakeInitialModel()
    loaded = StandInForge(tiny_ldm_unet(context_dim=768))
    calls = []
    webui.sd_models.forge_model_reload = lambda: (calls.append("reload"), (loaded, True))[1]
    host = WebuiRuntime().host()
    assert type(host).__name__ == "ForgeHost" and calls == ["reload"] and host.unet is loaded.forge_objects.unet.model \
        .diffusion_model

    def no_checkpoint():
        raise ValueError("You do not have any model! Please download at least one model in [models/Stable-diffusion].")

    webui.sd_models.forge_model_reload = no_checkpoint
    with pytest.raises(HypernetError, match="choose a checkpoint at the top of the page"):
        WebuiRuntime().host()
