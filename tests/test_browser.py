"""A real browser on the standalone UI: headless Chromium (Debian's, driven by Playwright) creates a hypernetwork,
sees its card, then starts a training run and interrupts it.

Needs the `playwright` package (in the test extra) and a Chromium binary: /usr/bin/chromium from Debian's
`chromium` package, or the path in HYPERNET_CHROMIUM. Playwright's own browser download is never used.
"""
import os
import shutil
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

import hypernet  # noqa: E402
from hypernet.tiny.demo import make_style_dataset  # noqa: E402

CHROMIUM = os.environ.get("HYPERNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (see .ci/run)",
                allow_module_level=True)

# Flags for a root user on a machine without network: no sandbox, no GPU, no background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    from hypernet.apps.standalone import Studio
    from hypernet.tiny.model import load_pipeline
    root = tmp_path_factory.mktemp("browser")
    studio = Studio(load_pipeline(), str(root / "hypernetworks"), str(root / "logs"))
    port = free_port()
    blocks = studio.launch("127.0.0.1", port, block=False)
    yield studio, f"http://127.0.0.1:{port}/", root
    for job in list(studio.state.jobs.values()):
        job.interrupt()
        job.wait_for(lambda st: st["finished"] is not None, timeout=60)
    blocks.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(server[1], wait_until="domcontentloaded")
        tab.locator("#hypernet_gen_button").wait_for(state="visible")
        yield tab
        browser.close()


def _tab(page, title: str) -> None:
    page.locator(".tab-nav button, [role=tab]", has_text=title).first.click()


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def test_create_in_the_browser_then_see_the_card(server, page):
    studio, _, _ = server
    _tab(page, "Create")
    _fill(page, "hypernet_create_name", "from_browser")
    page.locator("#hypernet_create_button").click()
    result = page.locator("#hypernet_create_result").first  # gradio 3 repeats an HTML block's id inside it
    result.get_by_text("Created", exact=False).wait_for()
    path = Path(studio.state.folder()) / "from_browser.pt"
    assert str(path) in result.inner_text() and "parameters" in result.inner_text()
    assert hypernet.load(path).name == "from_browser"
    _tab(page, "Hypernetworks")
    card = page.locator("#hypernet_cards .hypernet-card[data-name='from_browser']")
    card.wait_for(state="visible")
    assert "step 0" in card.inner_text()


def test_start_and_interrupt_training_in_the_browser(server, page):
    studio, _, root = server
    data = make_style_dataset(root / "data", count=4)
    _tab(page, "Train")
    _fill(page, "hypernet_train_new_name", "browser_run")
    _fill(page, "hypernet_train_data", str(data))
    _fill(page, "hypernet_train_width", "64")
    _fill(page, "hypernet_train_height", "64")
    _fill(page, "hypernet_train_steps", "100000")
    _fill(page, "hypernet_train_learning_rate", "1e-3")
    page.locator("#hypernet_train_button").click()
    status = page.locator("#hypernet_train_status").first
    status.get_by_text("running, step", exact=False).wait_for()
    page.wait_for_function(
        "() => /step [1-9]\\d*\\//.test(document.querySelector('#hypernet_train_status').innerText)",
        timeout=TIMEOUT_MS)
    page.locator("#hypernet_train_interrupt").click()
    status.get_by_text("interrupted", exact=False).wait_for()
    saved = Path(studio.state.folder()) / "browser_run.pt"
    assert f"Saved {saved}" in status.inner_text()
    hn = hypernet.load(saved)
    assert 0 < hn.step < 100000 and hn.dims == [32, 64]
    # the loss plot arrived and decoded (gradio 4 lazy-loads images below the fold, so scroll to it first)
    plot = page.locator("#hypernet_train_loss img").first
    plot.wait_for(state="attached")
    plot.scroll_into_view_if_needed()
    page.wait_for_function("() => { const i = document.querySelector('#hypernet_train_loss img');"
                           " return i && i.complete && i.naturalWidth > 100; }", timeout=TIMEOUT_MS)
