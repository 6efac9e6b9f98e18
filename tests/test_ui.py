"""The Create and Train tabs and the standalone UI, built and driven with the real gradio (3.41.2 in CI).

Tabs inside the webui are checked against the stand-in `modules`; the standalone app runs on the built-in tiny
model and is also served over HTTP.
"""
import dataclasses
import json
import urllib.request

import pytest

gr = pytest.importorskip("gradio")

import hypernet  # noqa: E402
from hypernet.config import CreateOptions, TrainOptions  # noqa: E402
from hypernet.tiny.demo import make_style_dataset  # noqa: E402
from webui_stub.harness import stub_modules  # noqa: E402


def _components(blocks) -> dict:
    return {getattr(b, "elem_id", None): b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@pytest.fixture
def webui(tmp_path):
    with stub_modules(tmp_path) as w:
        w.start()
        yield w


@pytest.fixture(scope="module")
def pipe():
    from hypernet.tiny.model import load_pipeline
    return load_pipeline()


@pytest.fixture
def studio(pipe, tmp_path):
    from hypernet.apps.standalone import Studio
    s = Studio(pipe, str(tmp_path / "hypernetworks"), str(tmp_path / "logs"))
    yield s
    s.state.detach()


@pytest.fixture(scope="module")
def style_data(tmp_path_factory):
    return make_style_dataset(tmp_path_factory.mktemp("style") / "set", count=6)


# ---------------------------------------------------------------------------------------------- in the webui
def test_webui_puts_create_and_train_under_train_and_adds_no_top_level_tab(webui):
    with gr.Blocks() as blocks:
        preview = [gr.Textbox("a prompt"), gr.Textbox(""), gr.Number(12), gr.Dropdown(["Euler a"], value="Euler a"),
                   gr.Number(6.5), gr.Number(42), gr.Number(64), gr.Number(64)]
        with gr.Tabs():
            webui.script_callbacks.ui_train_tabs_callback(webui.script_callbacks.UiTrainTabParams(preview))
    assert webui.script_callbacks.ui_tabs_callback() == []
    comps = _components(blocks)
    tabs = [b for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert {t.label for t in tabs} >= {"Create hypernet", "Train hypernet"}
    for f in dataclasses.fields(CreateOptions):
        comp = comps[f"hypernet_create_{f.name}"]
        default = _default(f)
        if f.name == "dims":
            assert comp.value == [str(d) for d in default]
        elif isinstance(default, list) or default is None:
            assert isinstance(comp, gr.Textbox)
        else:
            assert comp.value == default, f.name
    log_dir = comps["hypernet_train_log_dir"].value
    assert log_dir.endswith("textual_inversion")          # the built-in Train tab's folder, not "logs" in cwd
    for f in dataclasses.fields(TrainOptions):
        if f.name not in ("log_dir",):
            comp = comps[f"hypernet_train_{f.name}"]
            assert comp.value == (str(_default(f)) if f.metadata.get("choices") else _default(f)), f.name
    assert comps["hypernet_train_use_txt2img"].value is True


def test_forge_gets_one_top_level_tab_when_train_tabs_never_run(webui):
    tabs = webui.script_callbacks.ui_tabs_callback()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert title == "Hypernetworks" and isinstance(blocks, gr.Blocks) and elem_id
    comps = _components(blocks)
    assert "hypernet_create_button" in comps and "hypernet_train_button" in comps
    assert comps["hypernet_train_use_txt2img"].visible is False   # no txt2img to read from


def test_create_tab_creates_reports_and_refuses_with_the_field_named(webui):
    from hypernet.ui import tabs
    from hypernet.webui.state import get_state
    from hypernet.webui.training import WebuiRuntime
    panel = tabs.Panel(get_state(), WebuiRuntime())
    values = ["painter", ["768", "320", "640", "1280"], "1, 2, 1", "relu", "Normal", False, "", False, ".pt", False]
    message, reply = tabs.create_click(panel, *values)
    path = webui.folder / "painter.pt"
    assert path.is_file() and reply["path"] == str(path)
    assert f"Created {path} (" in message and "parameters" in message and "None" not in message
    assert "Same math in the webui and ComfyUI" in message
    assert hypernet.load(path).dims == [320, 640, 768, 1280]
    again, reply = tabs.create_click(panel, *values)
    assert reply is None and "already exists" in again and "overwrite" in again
    bad = list(values)
    bad[0], bad[2] = "other", "2, 1"
    message, reply = tabs.create_click(panel, *bad)
    assert reply is None and "layer_structure" in message and "Error" in message
    assert not (webui.folder / "other.pt").exists()
    assert "painter" in tabs.hypernetwork_choices(panel)


def test_train_fields_take_txt2img_preview_settings_and_a_file_to_continue():
    from hypernet.ui import tabs
    opts = [_default(f) for f in dataclasses.fields(TrainOptions)]
    fields = tabs.train_fields("mine", [None] * len(tabs.TRAIN_CREATE_FIELDS), opts, True,
                               ["a cat", "blurry", 12.0, "Euler a", 6.5, 42.0, 64.0, 64.0])
    assert fields["hypernetwork"] == "mine" and "name" not in fields
    assert fields["preview_prompt"] == "a cat" and fields["preview_steps"] == 12 and fields["preview_seed"] == 42
    assert fields["preview_sampler"] == "Euler a" and isinstance(fields["preview_width"], int)
    new = tabs.train_fields(tabs.NEW, ["fresh", [], "1, 2, 1", "relu", "Normal", False, "", False], opts)
    assert new["name"] == "fresh" and "dims" not in new and "hypernetwork" not in new   # [] = the model's widths
    assert new["preview_prompt"] == ""


# ---------------------------------------------------------------------------------------------- standalone
def _train_values(studio, name, data, **overrides):
    from hypernet.ui import tabs
    create = ["" if f.name == "name" else _default(f) for f in dataclasses.fields(CreateOptions)]
    create[0] = name
    create[1] = []
    options = {f.name: _default(f) for f in dataclasses.fields(TrainOptions)}
    options.update({"data": str(data), "width": 64, "height": 64, "log_dir": studio.log_dir, "preview_every": 0,
                    "save_every": 0, "learning_rate": "1e-3", **overrides})
    return [tabs.NEW, False, *create, *[options[n] for n in tabs.TRAIN_OPTION_FIELDS]]


def test_train_tab_streams_progress_until_the_file_is_saved(studio, style_data):
    from hypernet.ui import tabs
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    updates = list(tabs.train_click(panel, *_train_values(studio, "streamed", style_data, steps=4,
                                                          preview_every=2, preview_steps=2)))
    html, loss, previews = updates[-1]
    assert "completed" in html and "step 4/4" in html, html
    saved = studio.state.folder() + "/streamed.pt"
    assert f"Saved {saved}" in html
    assert hypernet.load(saved).step == 4
    assert loss is not None and loss.size == (640, 320)
    assert len(previews) == 2 and all(p.endswith(".png") for p in previews)
    assert len(updates) >= 3                                # queued/running states came before the end
    assert "streamed" in studio.cards_html()


def test_train_tab_refuses_bad_input_before_starting(studio, style_data, tmp_path):
    from hypernet.ui import tabs
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    [(html, _, _)] = list(tabs.train_click(panel, *_train_values(studio, "", style_data)))
    assert "name" in html and "Error" in html
    [(html, _, _)] = list(tabs.train_click(panel, *_train_values(studio, "x", tmp_path / "nowhere")))
    assert "data" in html and "not a folder" in html
    [(html, _, _)] = list(tabs.train_click(panel, *_train_values(studio, "x", style_data, learning_rate="fast")))
    assert "learning_rate" in html
    assert studio.state.jobs == {}


def test_interrupt_button_stops_a_run_which_saves(studio, style_data):
    from hypernet.ui import tabs
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    assert "No training job" in tabs.interrupt_click(panel)
    stream = tabs.train_click(panel, *_train_values(studio, "stopped", style_data, steps=100000))
    for html, _, _ in stream:
        if "running" in html and "step 0/" not in html:
            break
    assert "Interrupting stopped" in tabs.interrupt_click(panel)
    last = list(stream)[-1][0]
    assert "interrupted" in last
    hn = hypernet.load(studio.state.folder() + "/stopped.pt")
    assert 0 < hn.step < 100000
    # reloading the page: "Show progress" finds the last job
    assert "interrupted" in list(tabs.watch_click(panel))[-1][0]


def test_generate_applies_tags_and_returns_to_the_base_image(studio):
    import numpy as np
    hypernet.create(dims=[32, 64], name="tint", seed=1).save(studio.state.folder() + "/tint.pt")
    base, info = studio.generate("a red circle on the left, blue background", steps=6, seed=3)
    with_tag, info_tag = studio.generate("a red circle on the left, blue background <hypernet:tint:5>", steps=6,
                                         seed=3)
    zero, _ = studio.generate("a red circle on the left, blue background <hypernet:tint:0>", steps=6, seed=3)
    again, _ = studio.generate("a red circle on the left, blue background", steps=6, seed=3)
    assert not np.array_equal(np.asarray(base), np.asarray(with_tag))
    assert np.array_equal(np.asarray(base), np.asarray(zero))
    assert np.array_equal(np.asarray(base), np.asarray(again))
    assert "Hypernetworks: <hypernet:tint:5>" in info_tag and "Hypernetworks: none" in info
    _, missing = studio.generate("x <hypernet:nosuch:1>", steps=2)
    assert "nosuch" in missing and "not applied" in missing
    _, bad = studio.generate("x <hypernet:tint:lots>", steps=2)
    assert bad.startswith("Error") and "lots" in bad
    with studio.lock:  # what a training run holds
        busy, busy_info = studio.generate("a red circle", steps=2)
    assert busy is None and "training run" in busy_info
    assert studio.insert_tag("a cat", "tint") == "a cat <hypernet:tint:1>"
    assert studio.insert_tag("a cat <hypernet:tint:1>", "tint") == "a cat <hypernet:tint:1>"


def test_standalone_serves_on_loopback(studio, free_port):
    port = free_port()
    blocks = studio.launch("127.0.0.1", port, block=False)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as cfg:
            text = cfg.read().decode()
        for elem_id in ("hypernet_create_button", "hypernet_train_button", "hypernet_gen_button", "hypernet_cards"):
            assert elem_id in text
    finally:
        blocks.close()


def _request(port, method="GET", path="/config", **headers):
    """(status, headers) of one request with exactly these headers."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def _websocket_status(port, origin):
    """The status line's code for a websocket handshake on the queue with this Origin."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((f"GET /queue/join HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode())
        return int(sock.recv(1024).split(b" ", 2)[1])


def test_standalone_refuses_requests_from_other_sites(studio, free_port):
    port = free_port()
    blocks = studio.launch("127.0.0.1", port, block=False)
    try:
        for origin in ("http://evil.example", f"http://evil.example:{port}", "http://127.0.0.1:1", "null",
                       f"https://127.0.0.1:{port}"):
            for method in ("GET", "POST", "OPTIONS"):
                status, headers = _request(port, method, Origin=origin, **{"Access-Control-Request-Method": "POST"})
                assert status == 403, (origin, method, status)
                assert "access-control-allow-origin" not in headers, (origin, method, headers)
        assert _websocket_status(port, "http://evil.example") == 403
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", None):
            status, headers = _request(port, **({"Origin": origin} if origin else {}))
            assert status == 200, origin
            assert headers.get("access-control-allow-origin") != "*", headers
        assert _websocket_status(port, f"http://localhost:{port}") == 101
    finally:
        blocks.close()


def test_same_origin_rule():
    from hypernet.apps.standalone import same_origin, served_names
    local, anywhere = served_names("127.0.0.1"), served_names("0.0.0.0")
    assert same_origin("http://127.0.0.1:7861", local, 7861)
    assert same_origin("http://localhost:7861", local, 7861)
    assert same_origin("http://[::1]:7861", served_names("localhost"), 7861)
    assert same_origin("http://box.lan:7861", served_names("0.0.0.0", ["box.lan"]), 7861)   # a name given to serve
    assert not same_origin("http://box.lan:7861", anywhere, 7861)   # every interface no longer means every name
    assert same_origin("http://pc:80", served_names("pc"), 80) and same_origin("http://pc", served_names("pc"), 80)
    assert not same_origin("http://localhost:7862", local, 7861)
    assert not same_origin("https://localhost:7861", local, 7861)
    assert not same_origin("http://evil.example:7861", local, 7861)  # DNS rebinding
    assert not same_origin("null", local, 7861) and not same_origin("http://x:port", served_names("x"), 7861)


def test_standalone_train_tab_keeps_writes_in_its_folders(pipe, tmp_path, style_data):
    from hypernet.apps.standalone import Studio
    from hypernet.ui import tabs
    studio = Studio(pipe, str(tmp_path / "hypernetworks"), str(tmp_path / "logs"))
    panel = tabs.Panel(studio.state, runtime=studio.runtime, log_dir=studio.log_dir)
    outside = tmp_path / "outside"
    for field, value_ in (("output", str(outside / "x.pt")), ("log_dir", str(outside)), ("output", "../x.pt"),
                          ("latent_cache_dir", "../cache")):
        [(html, _, _)] = list(tabs.train_click(panel, *_train_values(studio, "x", style_data, **{field: value_})))
        assert "Error" in html and f"{field}:" in html and "outside the" in html and "--allow-any-path" in html
    existing = tmp_path / "hypernetworks" / "taken.pt"
    hypernet.create(dims=[32], name="taken").save(existing)
    before = existing.read_bytes()
    [(html, _, _)] = list(tabs.train_click(panel, *_train_values(studio, "x", style_data, output="taken.pt")))
    assert "already exists" in html and "overwrite" in html
    assert existing.read_bytes() == before and studio.state.jobs == {} and not outside.exists()
    free = Studio(pipe, str(tmp_path / "hypernetworks"), str(tmp_path / "logs"), allow_any_path=True)
    from hypernet.ui import actions
    assert actions.any_path_allowed(free.state) and not actions.any_path_allowed(studio.state)
    assert actions.confined(free.state.folder(), str(outside), "output", "hypernetwork folder", True) == str(outside)


def test_ui_command_passes_allow_any_path(monkeypatch):
    import hypernet.apps.standalone
    from hypernet.apps.cli import main
    seen = {}
    monkeypatch.setattr(hypernet.apps.standalone, "serve", lambda *a, **kw: seen.update(kw))
    assert main(["ui", "--port", "1"]) == 0 and seen["allow_any_path"] is False
    assert main(["ui", "--port", "1", "--allow-any-path"]) == 0 and seen["allow_any_path"] is True


def test_ui_command_explains_a_missing_gradio(monkeypatch, capsys):
    import builtins
    from hypernet.apps.cli import main
    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("no gradio")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["ui"]) == 2
    assert "gradio" in capsys.readouterr().err


def test_standalone_answers_only_the_host_names_it_serves(studio, free_port):
    """DNS rebinding: a page on another domain that resolves to 127.0.0.1 sends its own name as Host."""
    port = free_port()
    blocks = studio.launch("127.0.0.1", port, block=False, allowed_hosts=["box.lan"])
    try:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "", f"box.lan:{port}x"):
            for path in ("/config", "/", "/file=settings.json"):
                status, _ = _request(port, path=path, Host=host)
                assert status == 403, (host, path, status)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"box.lan:{port}", f"BOX.lan:{port}"):
            assert _request(port, Host=host)[0] == 200, host
    finally:
        blocks.close()


def test_a_non_loopback_bind_needs_expose_and_says_what_it_allows(studio, capsys):
    from hypernet.errors import ConfigError
    from hypernet.apps.standalone import check_bind
    for host in ("0.0.0.0", "::", "192.168.1.5", "box.lan"):
        with pytest.raises(ConfigError, match="--expose") as info:
            studio.launch(host, 1, block=False)
        assert info.value.field == "host"
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, 7861, expose=False)
    check_bind("0.0.0.0", 7861, expose=True)
    assert "anyone on the network" in capsys.readouterr().err


def test_one_bad_file_never_takes_the_listing_with_it(studio, tmp_path):
    import io
    import torch
    from hypernet.fileformat import files
    folder = studio.state.folder()
    hypernet.create(dims=[32], seed=0, name="good").save(f"{folder}/good.pt")
    state = torch.load(io.BytesIO(files.to_pt_bytes(hypernet.create(dims=[32], seed=0))), weights_only=True)
    state["step"] = 10 ** 30
    torch.save(state, f"{folder}/huge_step.pt")
    page = studio.cards_html()
    assert "data-name='good'" in page and "data-name='huge_step'" in page
    assert "cannot be read" in page and "outside 0 to 1,000,000,000" in page


def test_a_prompt_of_many_unknown_tags_scans_the_folder_once(studio, monkeypatch):
    from hypernet.library import Library
    _ = studio.state.library  # built (and scanned) before counting
    scans = []
    real = Library.refresh
    monkeypatch.setattr(Library, "refresh", lambda self: scans.append(1) or real(self))
    prompt = "x " + " ".join(f"<hypernet:missing{i}:1>" for i in range(500))
    _, info = studio.generate(prompt, steps=1)
    assert info.count("not applied") == 500 and len(scans) == 1


# ---------------------------------------------------------------------------------------------- ui-config.json
def _webui_train_fields():
    """The inputs of the webui's own Train interface (v1.10.1 modules/ui.py), with their labels and defaults: what
    its first start writes into ui-config.json under "train/"."""
    gr.Textbox(label="Name")
    gr.Textbox(label="Initialization text", value="*")
    gr.Slider(label="Number of vectors per token", minimum=1, maximum=75, step=1, value=1)
    gr.Checkbox(value=False, label="Overwrite Old Embedding")
    gr.Button(value="Create embedding")
    gr.Textbox(label="Name")
    gr.Textbox("1, 2, 1", label="Enter hypernetwork layer structure")
    gr.Checkbox(label="Add layer normalization")
    gr.Checkbox(label="Use dropout")
    gr.Checkbox(value=False, label="Overwrite Old Hypernetwork")
    gr.Button(value="Create hypernetwork")
    gr.Dropdown(label="Embedding", choices=[])
    gr.Dropdown(label="Hypernetwork", choices=[])
    gr.Textbox(label="Embedding Learning rate", value="0.005")
    gr.Textbox(label="Hypernetwork Learning rate", value="0.00001")
    gr.Dropdown(value="disabled", label="Gradient Clipping", choices=["disabled", "value", "norm"])
    gr.Number(label="Batch size", value=1, precision=0)
    gr.Number(label="Gradient accumulation steps", value=1, precision=0)
    gr.Textbox(label="Dataset directory")
    gr.Textbox(label="Log directory", value="textual_inversion")
    gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=512)
    gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=512)
    gr.Checkbox(label="Do not resize images", value=False)
    gr.Number(label="Max steps", value=100000, precision=0)
    gr.Checkbox(label="Use PNG alpha channel as loss weight", value=False)
    gr.Checkbox(label="Shuffle tags by ',' when creating prompts.", value=False)
    gr.Slider(minimum=0, maximum=1, step=0.1, label="Drop out tags when creating prompts.", value=0)
    gr.Radio(label="Choose latent sampling method", value="once", choices=["once", "deterministic", "random"])
    gr.Button(value="Train Embedding")
    gr.Button(value="Interrupt")
    gr.Button(value="Train Hypernetwork")


def _train_interface(webui):
    """The webui's Train interface as modules/ui.py builds it: its own sub-tabs, then the extensions'."""
    with gr.Blocks() as blocks:
        with gr.Tabs():
            with gr.Tab("Train"):
                _webui_train_fields()
            webui.script_callbacks.ui_train_tabs_callback(webui.script_callbacks.UiTrainTabParams(None))
    return blocks


def _forge_interface(webui):
    from hypernet.webui import ui
    ui.reset()
    return webui.script_callbacks.ui_tabs_callback()[0][0]


TRACKED = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)   # what ui-config.json keeps


def _ours(blocks) -> dict:
    """Every input of ours by elem_id, with its value."""
    return {k: v.value for k, v in _components(blocks).items()
            if k.startswith("hypernet_") and isinstance(v, gr.components.IOComponent)
            and not isinstance(v, (gr.Button, gr.HTML, gr.Image, gr.Gallery))}


def _value_keys(blocks, interface: str, ours: bool) -> list:
    """The ui-config keys of the tracked inputs of ours (or of the host's), one per component."""
    return [f"{interface}/{c.label}/value" for c in blocks.blocks.values()
            if type(c) in TRACKED and c.label is not None
            and str(getattr(c, "elem_id", None) or "").startswith("hypernet_") == ours]


@pytest.mark.parametrize("host,interface", [("webui", "train"), ("forge", "hypernet_tab")])
def test_a_restart_with_the_hosts_ui_config_changes_none_of_our_fields(webui, tmp_path, host, interface):
    """The host saves every field by tab and label, and a restart applies the file: each of our fields keeps its own
    key, so an unedited tab comes back exactly as built, whatever the host's own fields hold."""
    from modules.ui_loadsave import UiLoadsave
    build = (lambda: _train_interface(webui)) if host == "webui" else (lambda: _forge_interface(webui))
    config = tmp_path / "ui-config.json"
    defaults = _ours(build())
    assert len(defaults) > 60 and defaults["hypernet_compare_width"] == 0 and defaults["hypernet_train_new_name"] == ""
    first = build()
    keys, host_keys = _value_keys(first, interface, True), _value_keys(first, interface, False)
    assert len(keys) > 60 and len(set(keys)) == len(keys) and not set(keys) & set(host_keys)
    assert (host == "webui") == bool(host_keys)
    loadsave = UiLoadsave(config)
    loadsave.add_block(first, interface)
    loadsave.dump_defaults()                              # the first start writes every default
    assert _ours(first) == defaults
    saved = json.loads(config.read_text())
    assert f"{interface}/Grid width/value" in saved and f"{interface}/Run/value" not in saved   # runs come and go
    again = build()
    UiLoadsave(config).add_block(again, interface)        # a restart applies the file
    assert _ours(again) == defaults
