"""The /hypernet/v1/ HTTP API, through FastAPI's TestClient, against the stand-in webui `modules`."""
import inspect
import os
from pathlib import Path

import pytest

import hypernet
from webui_stub.harness import stub_modules

import fastapi  # noqa: E402  (the test extra installs fastapi==0.94.0, the webui's, and httpx)
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

API = "/hypernet/v1"


@pytest.fixture
def httpx_without_app(monkeypatch):
    """starlette 0.26 (the webui's fastapi 0.94) passes app= to httpx.Client, which httpx 0.28 removed; the
    transport it also passes is all the client needs."""
    if "app" not in inspect.signature(httpx.Client.__init__).parameters:
        original = httpx.Client.__init__

        def init(self, *args, app=None, **kwargs):
            original(self, *args, **kwargs)

        monkeypatch.setattr(httpx.Client, "__init__", init)


@pytest.fixture
def webui(tmp_path, httpx_without_app):
    with stub_modules(tmp_path) as w:
        w.app = fastapi.FastAPI()
        w.start(w.app)
        w.client = TestClient(w.app)
        yield w
        from hypernet.webui.state import get_state
        for job in get_state().jobs.values():
            job.interrupt()
            if job.thread is not None:
                job.thread.join(60)


@pytest.fixture(scope="module")
def sd_model():
    from models import StandInLatentDiffusion
    return StandInLatentDiffusion()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from test_train import make_images
    return make_images(tmp_path_factory.mktemp("images"))


def make(folder, rel, dims=(32, 64), seed=0, **kwargs):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return hypernet.create(dims=list(dims), seed=seed, name=path.stem, **kwargs).save(path)


def field_of(response):
    """The field a 4xx answer names (FastAPI's validation-error shape)."""
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    return detail[0]["loc"][-1]


def wait(client, job_id, until=lambda s: s["finished"] is not None, timeout=240):
    from hypernet.webui.state import get_state
    if not get_state().jobs[job_id].wait_for(until, timeout):
        raise AssertionError(f"job {job_id} did not get there in {timeout}s")
    return client.get(f"{API}/train/status", params={"job_id": job_id}).json()


def train_body(data_dir, **kw):
    body = dict(data=str(data_dir), steps=2, width=64, height=64, learning_rate=0.001, preview_every=0,
                save_every=0, template="subject_filewords", seed=1)
    body.update(kw)
    return body


# ---------------------------------------------------------------------------------------------- list, refresh
def test_list_and_refresh(webui):
    make(webui.folder, "a.pt", layer_norm=True)
    make(webui.folder, "sub/b.safetensors", seed=1)
    r = webui.client.get(f"{API}/hypernetworks")
    assert r.status_code == 200
    listed = {x["name"]: x for x in r.json()}
    assert set(listed) == {"a", "b"}
    a = listed["a"]
    assert a["relpath"] == "a.pt" and a["format"] == "pt" and a["shorthash"] == ""
    assert a["metadata"]["dims"] == [32, 64] and a["metadata"]["layer_norm"] is True
    assert a["metadata"]["fits"] is None                     # no model loaded
    hashed = {x["name"]: x for x in webui.client.get(f"{API}/hypernetworks", params={"hashes": True}).json()}
    assert hashed["b"]["shorthash"] == hypernet.shorthash(webui.folder / "sub" / "b.safetensors")

    make(webui.folder, "c.pt", seed=2)
    r = webui.client.post(f"{API}/refresh")
    assert r.status_code == 200 and r.json() == {"count": 3, "hypernetworks": ["a", "c", "b"]}  # by path


# ---------------------------------------------------------------------------------------------- create
def test_create_with_defaults_reports_where_and_how_big(webui):
    r = webui.client.post(f"{API}/create", json={"name": "gollum"})
    assert r.status_code == 200, r.text
    reply = r.json()
    path = webui.folder / "gollum.pt"
    assert reply["path"] == str(path) and reply["size_bytes"] == path.stat().st_size
    assert reply["parameters"] > 20_000_000 and "None" not in reply["info"]
    assert reply["info"].startswith(f"Created {path} (") and "parameters, widths 320, 640, 768, 1280)" in reply["info"]
    hn = hypernet.load(path)
    assert hn.dims == [320, 640, 768, 1280] and hn.config.activation == "relu" and hn.step == 0
    assert hypernet.webui_check(path) is None                # the webui's own loader accepts it
    assert reply["readers"] == {"webui": None, "comfyui": None}
    assert "same math in the webui and ComfyUI" in reply["same_math"]
    names = [x["name"] for x in webui.client.get(f"{API}/hypernetworks").json()]
    assert names == ["gollum"]
    st = webui.client.post(f"{API}/create", json={"name": "smeagol", "format": ".safetensors"}).json()
    assert "only .pt" in st["readers"]["webui"] and "only from .pt" in st["readers"]["comfyui"]


def test_create_refuses_to_overwrite_and_names_bad_fields(webui):
    body = {"name": "g", "dims": [32, 64], "layer_structure": "1, 3, 1", "activation": "elu"}
    assert webui.client.post(f"{API}/create", json=body).status_code == 200
    before = (webui.folder / "g.pt").read_bytes()
    r = webui.client.post(f"{API}/create", json=body)
    assert r.status_code == 409 and field_of(r) == "overwrite" and "already exists" in r.text
    assert (webui.folder / "g.pt").read_bytes() == before
    r = webui.client.post(f"{API}/create", json={**body, "overwrite": True, "layer_structure": [1, 2, 1]})
    assert r.status_code == 200 and hypernet.load(webui.folder / "g.pt").config.layer_structure == [1.0, 2.0, 1.0]
    r = webui.client.post(f"{API}/create", json={**body, "format": ".safetensors"})
    assert r.status_code == 409 and field_of(r) == "format"  # g.pt would shadow / be shadowed

    for bad, field in (({"layer_structure": "1, 2"}, "layer_structure"), ({"layer_structure": "2, 1"},
                       "layer_structure"), ({"activation": "wobbly"}, "activation"), ({"dims": "768, x"}, "dims"),
                       ({"name": "a/b"}, "name"), ({"format": ".ckpt"}, "format"), ({"colour": "red"}, "colour"),
                       ({"overwrite": "maybe"}, "overwrite")):
        r = webui.client.post(f"{API}/create", json={"name": "h", "dims": [32], **bad})
        assert r.status_code == 422, (bad, r.text)
        assert field_of(r) == field, (bad, r.json())
    r = webui.client.post(f"{API}/create", json={"name": "h", "layer_structure": "1, 2"})
    assert "start and end with 1" in r.text
    r = webui.client.post(f"{API}/create", json={"name": "s", "dims": [32], "format": ".safetensors"})
    assert r.status_code == 200 and r.json()["path"].endswith("s.safetensors")


# ---------------------------------------------------------------------------------------------- train
def test_train_a_new_hypernetwork_on_the_loaded_model(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="trained", activation="elu"))
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["output"] == str(webui.folder / "trained.pt")
    status = wait(webui.client, job["job_id"])
    assert status["state"] == "completed" and status["step"] == 2 and status["error"] is None, status
    assert status["output"] == job["output"] and status["loss"] is not None
    hn = hypernet.load(job["output"])
    assert hn.step == 2 and hn.dims == [32, 64] and hn.config.activation == "elu"   # the model's widths
    from modules import paths_internal
    assert job["log_dir"] == str(Path(paths_internal.data_path) / "textual_inversion")
    assert list(Path(job["log_dir"]).glob("*/trained/hypernetwork_loss.csv"))        # the run's log folder
    assert job["job_id"] in webui.shared.state.jobs_begun and webui.shared.state.job == ""
    assert webui.client.get(f"{API}/train/status").json()["job_id"] == job["job_id"]      # latest by default
    assert "trained" in [x["name"] for x in webui.client.get(f"{API}/hypernetworks").json()]

    r = webui.client.post(f"{API}/train", json=train_body(data_dir, hypernetwork="trained", steps=3))
    assert r.status_code == 200, r.text
    status = wait(webui.client, r.json()["job_id"])
    assert status["state"] == "completed" and status["start_step"] == 2 and status["step"] == 3
    assert hypernet.load(webui.folder / "trained.pt").step == 3                       # continued in place


def test_train_input_errors_name_the_field(webui, data_dir):
    make(webui.folder, "exists.pt")
    cases = [
        (train_body(data_dir, name="n", learning_rate="fast"), 422, "learning_rate"),
        (train_body(data_dir, name="n", width=65), 422, "width"),
        (train_body(data_dir, name="n", layer_structure="2, 1"), 422, "layer_structure"),
        (train_body(data_dir, name="n", optimizer="Magic"), 422, "optimizer"),
        (train_body(data_dir, name="n", data=""), 422, "data"),
        (train_body(data_dir, name="n", data=str(data_dir / "nowhere")), 422, "data"),
        (train_body(data_dir), 422, "name"),
        (train_body(data_dir, hypernetwork="nope"), 422, "hypernetwork"),
        (train_body(data_dir, hypernetwork="exists", name="x"), 422, "hypernetwork"),
        (train_body(data_dir, name="exists"), 409, "overwrite"),
        (train_body(data_dir, name="n", speed=3), 422, "speed"),
    ]
    for body, code, field in cases:
        r = webui.client.post(f"{API}/train", json=body)
        assert r.status_code == code and field_of(r) == field, (field, r.status_code, r.text)
    assert webui.client.get(f"{API}/train/status").json() == {"state": "idle", "job_id": None}
    assert webui.client.get(f"{API}/train/status", params={"job_id": "nope"}).status_code == 404
    r = webui.client.post(f"{API}/train/interrupt")
    assert r.status_code == 409


# ---------------------------------------------------------------------------------------------- where training writes
def _log_folder():
    from hypernet.ui.actions import default_log_dir
    from hypernet.webui.state import get_state
    return Path(default_log_dir(get_state()))


def test_train_writes_outside_the_folders_are_refused_naming_the_field(webui, data_dir, tmp_path):
    import os
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, webui.folder / "link")
    _log_folder().mkdir(parents=True, exist_ok=True)
    os.symlink(outside, _log_folder() / "link")
    cases = [
        ({"output": str(outside / "x.pt")}, "output"),
        ({"output": "../x.pt"}, "output"),                                  # .. out of the hypernetwork folder
        ({"output": "sub/../../x.pt"}, "output"),
        ({"output": "link/x.pt"}, "output"),                                # a symlink out of it
        ({"log_dir": str(outside)}, "log_dir"),
        ({"log_dir": "../.."}, "log_dir"),
        ({"log_dir": "link"}, "log_dir"),
        ({"latent_cache_dir": str(outside / "cache")}, "latent_cache_dir"),
        ({"latent_cache_dir": "../cache"}, "latent_cache_dir"),
        ({"latent_cache_dir": "link/cache"}, "latent_cache_dir"),
        ({"output": str(_log_folder() / "x.pt")}, "output"),                # the log folder is not for output
    ]
    for extra, field in cases:
        r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="escape", **extra))
        assert r.status_code == 403 and field_of(r) == field, (extra, r.status_code, r.text)
        assert "outside the" in r.text and "Allow the UI/API to write outside" in r.text, r.text
    from hypernet.webui.state import get_state
    assert get_state().jobs == {} and list(outside.iterdir()) == []          # nothing started, nothing written
    assert not (tmp_path / "x.pt").exists() and not (webui.folder.parent / "x.pt").exists()


def test_relative_paths_start_in_their_folders(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="rel", output="sub/rel.pt", log_dir="runs",
                                                         latent_cache_dir="cache"))
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["output"] == str(webui.folder / "sub" / "rel.pt") and job["log_dir"] == str(_log_folder() / "runs")
    assert wait(webui.client, job["job_id"])["state"] == "completed"
    assert hypernet.load(webui.folder / "sub" / "rel.pt").step == 2
    assert list((_log_folder() / "cache").iterdir())                         # the latent cache went there


def test_the_setting_lets_training_write_anywhere(webui, sd_model, data_dir, tmp_path):
    webui.shared.sd_model = sd_model
    out, logs = tmp_path / "elsewhere" / "free.pt", tmp_path / "elsewhere-logs"
    body = train_body(data_dir, name="free", output=str(out), log_dir=str(logs))
    assert webui.client.post(f"{API}/train", json=body).status_code == 403
    webui.shared.opts.hypernet_allow_any_path = True
    r = webui.client.post(f"{API}/train", json=body)
    assert r.status_code == 200, r.text
    assert wait(webui.client, r.json()["job_id"])["state"] == "completed"
    assert hypernet.load(out).step == 2 and list(logs.glob("*/free/hypernetwork_loss.csv"))


def test_replacing_another_file_needs_overwrite_but_continuing_in_place_does_not(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    make(webui.folder, "other.pt")
    make(webui.folder, "mine.pt")
    before = (webui.folder / "other.pt").read_bytes()
    for body in (train_body(data_dir, name="new", output="other.pt"),
                 train_body(data_dir, name="new", output=str(webui.folder / "other.pt")),
                 train_body(data_dir, hypernetwork="mine", output="other.pt")):
        r = webui.client.post(f"{API}/train", json=body)
        assert r.status_code == 409 and field_of(r) == "overwrite" and "other.pt already exists" in r.text, r.text
    assert (webui.folder / "other.pt").read_bytes() == before

    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="new", output="other.pt", overwrite=True))
    assert r.status_code == 200, r.text
    assert wait(webui.client, r.json()["job_id"])["state"] == "completed"
    replaced = hypernet.load(webui.folder / "other.pt")
    assert (webui.folder / "other.pt").read_bytes() != before and replaced.name == "new" and replaced.step == 2

    for body in (train_body(data_dir, hypernetwork="mine", steps=1),                  # its own file, by default
                 train_body(data_dir, hypernetwork="mine", steps=2, output="mine.pt")):  # or named
        r = webui.client.post(f"{API}/train", json=body)
        assert r.status_code == 200, r.text
        assert wait(webui.client, r.json()["job_id"])["state"] == "completed"
    assert hypernet.load(webui.folder / "mine.pt").step == 2

    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="mine", overwrite=True, steps=1))
    assert r.status_code == 200, r.text                       # a new file over an old one of that name, with the flag
    assert wait(webui.client, r.json()["job_id"])["state"] == "completed"
    assert hypernet.load(webui.folder / "mine.pt").step == 1


def test_training_waits_for_the_generation_queue(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    with webui.call_queue.queue_lock:                        # an image is being generated
        r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="queued"))
        assert r.status_code == 200
        job_id = r.json()["job_id"]
        from hypernet.webui.state import get_state
        assert not get_state().jobs[job_id].wait_for(lambda s: s["state"] != "queued", timeout=0.5)
        assert webui.client.get(f"{API}/train/status").json()["state"] == "queued"
        r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="second"))
        assert r.status_code == 409                            # one training at a time
    assert wait(webui.client, job_id)["state"] == "completed"


def test_interrupt_stops_saves_and_exits_cleanly(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="long", steps=100_000))
    job_id = r.json()["job_id"]
    wait(webui.client, job_id, until=lambda s: s["step"] >= 1)
    r = webui.client.post(f"{API}/train/interrupt", params={"job_id": job_id})
    assert r.status_code == 200 and r.json()["interrupting"] is True
    status = wait(webui.client, job_id)
    assert status["state"] == "interrupted" and status["error"] is None
    assert 1 <= status["step"] < 100_000
    assert hypernet.load(webui.folder / "long.pt").step == status["step"]
    copy = status["last_saved"]   # the numbered copy written at the interrupt, not null
    assert copy and os.path.basename(copy) == f"long-{status['step']}.pt" and hypernet.load(copy).step == status["step"]
    assert webui.client.post(f"{API}/train/interrupt", params={"job_id": job_id}).status_code == 409


def test_the_webui_interrupt_button_stops_training(webui, sd_model, data_dir):
    webui.shared.sd_model = sd_model
    job_id = webui.client.post(f"{API}/train", json=train_body(data_dir, name="button", steps=100_000)).json()["job_id"]
    wait(webui.client, job_id, until=lambda s: s["step"] >= 1)
    webui.shared.state.interrupt()
    status = wait(webui.client, job_id)
    assert status["state"] == "interrupted" and hypernet.load(webui.folder / "button.pt").step == status["step"]


def test_training_without_a_model_reports_an_error(webui, data_dir):
    r = webui.client.post(f"{API}/train", json=train_body(data_dir, name="nomodel"))
    status = wait(webui.client, r.json()["job_id"])
    assert status["state"] == "error" and "no model is loaded" in status["error"]
    assert not (webui.folder / "nomodel.pt").exists()


def test_request_models_show_defaults_and_help_in_the_api_docs(webui):
    r = webui.client.get("/openapi.json")                      # what the webui's /docs page renders
    assert r.status_code == 200
    schemas = r.json()["components"]["schemas"]
    create, train = schemas["HypernetCreateRequest"]["properties"], schemas["HypernetTrainRequest"]["properties"]
    assert create["layer_structure"]["default"] == [1.0, 2.0, 1.0]
    assert "starting and ending with 1" in create["layer_structure"]["description"]
    assert create["dims"]["default"] == [768, 320, 640, 1280] and "relu" in create["activation"]["description"]
    assert "one of" not in create["dims"]["description"]   # any positive width is accepted
    assert train["learning_rate"]["default"] == "0.00001" and train["steps"]["default"] == 1000
    assert {"hypernetwork", "overwrite", "name", "dims"} <= set(train)


def test_routes_follow_the_api_flag_and_api_auth(tmp_path, httpx_without_app):
    with stub_modules(tmp_path / "plain") as w:
        w.shared.cmd_opts.api = False
        app = fastapi.FastAPI()
        w.start(app)
        assert TestClient(app).get(f"{API}/hypernetworks").status_code == 404   # no --api: no routes
    with stub_modules(tmp_path / "auth") as w:
        w.shared.cmd_opts.api_auth = "alice:secret,bob:pw"
        app = fastapi.FastAPI()
        w.start(app)
        client = TestClient(app)
        assert client.get(f"{API}/hypernetworks").status_code == 401
        assert client.post(f"{API}/create", json={"name": "x", "dims": [32]}).status_code == 401
        assert client.get(f"{API}/hypernetworks", auth=("alice", "wrong")).status_code == 401
        assert client.get(f"{API}/hypernetworks", auth=("bob", "pw")).status_code == 200
        assert not (w.folder / "x.pt").exists()


# ---------------------------------------------------------------------------------------------- saved copies
def test_compare_the_copies_of_a_run_and_keep_one(webui, sd_model, data_dir):
    import base64
    import io

    from PIL import Image
    webui.shared.sd_model = sd_model
    job = webui.client.post(f"{API}/train", json=train_body(data_dir, name="cmp", steps=2, save_every=1,
                                                            learning_rate=0.05)).json()
    status = wait(webui.client, job["job_id"])
    assert status["state"] == "completed" and status["val_loss"] is not None
    assert status["prompt_kept"] > 0 and status["style"] > 0 and status["probe_step"] == 2
    assert Path(status["suggested"]).parent.name == "hypernetworks" and status["suggested_step"] in (1, 2)
    assert status["timing"].startswith("time: 2 steps in ") and "UNet forward" in status["timing"]
    from hypernet.ui.tabs import status_html
    assert "Time: 2 steps in " in status_html(status)  # the Train tab's last message says where the time went
    listing = webui.client.get(f"{API}/runs").json()
    runs = listing["runs"]
    assert runs[0] == status["run_dir"] and listing["suggested"][runs[0]] == status["suggested"]
    history = webui.client.get(f"{API}/train/status", params={"job_id": job["job_id"], "history": True}).json()
    assert [p[0] for p in history["probes"]] == [0, 1, 2] and "probes" not in status
    r = webui.client.post(f"{API}/compare", json={"run": status["run_dir"], "prompt": "a red square",
                                                  "strengths": "0, 1", "seed": 3, "steps": 2, "width": 64,
                                                  "height": 64})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert [c["step"] for c in reply["copies"]] == [1, 2] and all(c["val_loss"] for c in reply["copies"]), reply["copies"]
    assert all(c["prompt_kept"] and c["style"] for c in reply["copies"])
    assert [c["path"] for c in reply["copies"] if c["suggested"]] == [status["suggested"]]
    assert [c["strength"] for c in reply["columns"]] == [0.0, 1.0]
    grid = Image.open(io.BytesIO(base64.b64decode(reply["image"])))
    assert Path(reply["files"][0]).parent == Path(status["run_dir"]) and Image.open(reply["files"][0]).size == grid.size
    again = webui.client.post(f"{API}/compare", json={"run": status["run_dir"], "prompt": "a red square",
                                                      "strengths": "0, 1", "steps": 2, "width": 64, "height": 64})
    assert again.json()["files"][0] != reply["files"][0]        # a second grid never replaces the first
    first = reply["copies"][0]["path"]
    kept = webui.client.post(f"{API}/keep", json={"file": first, "name": "cmp-early"})
    assert kept.status_code == 200, kept.text
    assert Path(kept.json()["path"]) == webui.folder / "cmp-early.pt"
    assert (webui.folder / "cmp-early.pt").read_bytes() == Path(first).read_bytes() and Path(first).exists()
    assert "cmp-early" in webui.client.post(f"{API}/refresh").json()["hypernetworks"]
    assert webui.client.post(f"{API}/keep", json={"file": first, "name": "cmp-early"}).status_code == 409
    assert webui.client.post(f"{API}/keep", json={"file": first, "name": "cmp-early",
                                                  "overwrite": True}).status_code == 200


def test_compare_and_keep_refuse_paths_outside_the_log_folder(webui, tmp_path):
    outside = tmp_path / "elsewhere.pt"
    make(tmp_path, "elsewhere.pt")
    r = webui.client.post(f"{API}/keep", json={"file": str(outside)})
    assert r.status_code == 403 and field_of(r) == "file"
    r = webui.client.post(f"{API}/compare", json={"run": str(tmp_path), "prompt": "x"})
    assert r.status_code == 403 and field_of(r) == "run"
    r = webui.client.post(f"{API}/compare", json={"run": "nosuchrun", "prompt": "x"})
    assert r.status_code == 422 and field_of(r) == "run"
    r = webui.client.post(f"{API}/compare", json={"run": "x", "strengths": "0, loud"})
    assert r.status_code == 422 and field_of(r) == "strengths"


@pytest.mark.parametrize("how", ["interrupt", "skip", "stop"])
def test_the_webuis_interrupt_skip_and_our_stop_end_a_comparison_between_images(webui, sd_model, data_dir, how,
                                                                                 monkeypatch):
    """As the X/Y/Z plot does: Interrupt (and /sdapi/v1/interrupt, which calls it) and Skip stop between cells, and
    so does POST compare/interrupt; the grid rendered so far comes back."""
    from hypernet.webui.state import get_state
    webui.shared.sd_model = sd_model
    status = wait(webui.client, webui.client.post(f"{API}/train", json=train_body(
        data_dir, name=f"stop{how}", steps=2, save_every=1)).json()["job_id"])
    real, seen = webui.processing.process_images, []

    def process_images(p, *args):
        seen.append((webui.shared.state.job_no, webui.shared.state.job_count))
        out = real(p, *args)
        if len(seen) == 2:
            if how == "interrupt":
                webui.shared.state.interrupt()
            elif how == "skip":
                webui.shared.state.skipped = True
            else:
                assert webui.client.post(f"{API}/compare/interrupt").status_code == 200
        return out

    monkeypatch.setattr(webui.processing, "process_images", process_images)
    r = webui.client.post(f"{API}/compare", json={"run": status["run_dir"], "prompt": "a red square",
                                                  "strengths": "0, 1", "seed": -1, "steps": 2, "width": 64,
                                                  "height": 64})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert (reply["cells_done"], reply["cells_total"], reply["complete"]) == (2, 3, False) and len(seen) == 2
    assert seen == [(0, 3), (1, 3)]                       # the webui's progress shows images done of total
    assert reply["seed"] >= 0 and Path(reply["files"][0]).is_file()
    assert not get_state().compare_stop.is_set()            # a stop belongs to one comparison
