"""python -m hypernet ui: the Create and Train tabs, a Generate tab and the cards, on a diffusers pipeline, no webui.

The tabs are the same code the webui extension shows (hypernet/ui/, which never imports the webui's `modules`).
Generation and training share one lock, so an image is never drawn while the trainer has the UNet hooked.
Training writes stay inside the hypernetwork and log folders unless started with allow_any_path (--allow-any-path).
Only the UI's own pages may call it: gradio's allow-every-origin CORS middleware is replaced by SameOriginOnly, which
answers 403 to any request (websockets included) whose Host header is not a name the UI serves (127.0.0.1:PORT,
localhost:PORT, the --host name, the --allowed-hosts names: a page on another domain that resolves to 127.0.0.1, DNS
rebinding, sends its own name) or whose Origin header names another site. Listening beyond this machine (a --host
that is not a loopback address) needs --expose, and prints what that allows.
"""
from __future__ import annotations

import contextlib
import html
import ipaddress
import os
import sys
import threading
from typing import List, Optional
from urllib.parse import urlsplit

from ..errors import ConfigError, HypernetError, TagError
from ..tags import format_tag, parse
from ..ui.state import Applied, LibraryState

GENERATE_DEFAULTS = {"steps": 20, "cfg_scale": 5.0, "seed": 0}
QUEUE_WORKERS = 4
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ALL_INTERFACES = ("", "0.0.0.0", "::")


class SameOriginOnly:
    """ASGI middleware: 403 for an HTTP or websocket request sent to a host name the UI does not serve, or whose
    Origin is not the UI's own address."""

    def __init__(self, app, host: str, port: int, allowed_hosts=()):
        self.app, self.port = app, int(port)
        self.names = served_names(host, allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            if not host_served(headers.get(b"host", b"").decode("latin-1"), self.names, self.port) or (
                    origin is not None and not same_origin(origin.decode("latin-1"), self.names, self.port)):
                return await _refuse(scope, send)
        await self.app(scope, receive, send)


def served_names(host: str, allowed_hosts=()) -> frozenset:
    """The host names the UI answers to: the loopback names, the --host name unless it is every interface, and
    the --allowed-hosts names."""
    names = set(LOOPBACK_NAMES)
    if host not in ALL_INTERFACES:
        names.add(host.strip("[]").lower())
    names.update(name.strip().strip("[]").lower() for name in allowed_hosts if name.strip())
    return frozenset(names)


def _name_and_port(authority: str, default_port: int):
    """(host name, port) of a "name:port" authority, or None when it is malformed."""
    try:
        parsed = urlsplit(f"//{authority.strip()}")
        return (parsed.hostname or "").lower(), parsed.port or default_port
    except ValueError:
        return None


def host_served(host_header: str, names, port: int) -> bool:
    """Whether a request's Host header is name:port for a name the UI serves and its own port."""
    found = _name_and_port(host_header, 80)
    return bool(found and found[0]) and found[0] in names and found[1] == port


def same_origin(origin: str, names, port: int) -> bool:
    """Whether a request's Origin is the UI itself: http, its port, a name it serves."""
    try:
        parsed = urlsplit(origin.strip())
        origin_port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return False
    if parsed.scheme != "http" or origin_port != port or not parsed.hostname:
        return False
    return parsed.hostname.lower() in names


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, expose: bool) -> None:
    """ConfigError unless `host` is loopback or `expose` is given; with it, print what listening beyond this
    machine allows."""
    if is_loopback(host):
        return
    if not expose:
        raise ConfigError("host", f"{host} listens beyond this machine; anyone who can reach it could generate, "
                                  "train, and read and write the hypernetwork and log folders. Add --expose to do so "
                                  "knowingly, or use --host 127.0.0.1")
    print(f"WARNING: hypernet ui listens on {host}:{port} with no login: anyone on the network who can reach it can "
          "use the UI, train, and read and write files in the hypernetwork and log folders. It answers only to the "
          "host names 127.0.0.1, localhost, --host and --allowed-hosts.", file=sys.stderr)


async def _refuse(scope, send) -> None:
    if scope["type"] == "websocket":  # closing before accepting answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b"cross-origin request refused: only the hypernet UI's own pages may call it"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def same_origin_app(app, host: str, port: int, allowed_hosts=()):
    """A gradio FastAPI app with its CORS middleware (allow every origin) replaced by SameOriginOnly."""
    app.user_middleware = [m for m in app.user_middleware if "CORS" not in getattr(m.cls, "__name__", "")]
    app.add_middleware(SameOriginOnly, host=host, port=port, allowed_hosts=tuple(allowed_hosts))
    return app


@contextlib.contextmanager
def same_origin_apps(host: str, port: int, allowed_hosts=()):
    """While it lasts, every app gradio creates (gradio.routes.App.create_app, what launch() serves in gradio 3
    and 4) is a same_origin_app, secured before it answers its first request."""
    from gradio import routes
    saved = routes.App.__dict__["create_app"]
    create = routes.App.create_app

    def create_app(*args, **kwargs):
        return same_origin_app(create(*args, **kwargs), host, port, allowed_hosts)

    routes.App.create_app = staticmethod(create_app)
    try:
        yield
    finally:
        routes.App.create_app = saved


class StandaloneState(LibraryState):
    """The UI state over a folder of files and one diffusers pipeline instead of the webui's model; training writes
    stay in `folder` and `log_folder` unless `allow_any_path`."""

    def __init__(self, folder: str, pipe, log_folder: str = "logs", allow_any_path: bool = False):
        super().__init__(os.path.abspath(folder))
        self.pipe = pipe
        self.log_folder = os.path.abspath(log_folder)
        self.allow_any_path = allow_any_path

    def loaded_model(self, load: bool = False):
        return self.pipe


class Studio:
    """The standalone app: state, a lock shared by generation and training, and the gradio Blocks."""

    def __init__(self, pipe, folder: str, log_dir: str, size: Optional[int] = None, allow_any_path: bool = False):
        from ..hosts.diffusers import DiffusersHost
        from ..ui.jobs import LocalRuntime
        os.makedirs(folder, exist_ok=True)
        self.pipe = pipe
        self.state = StandaloneState(folder, pipe, log_dir, allow_any_path)
        self.lock = threading.Lock()
        self.runtime = LocalRuntime(lambda: DiffusersHost(pipe), lock=self.lock, on_finished=self.state.refresh)
        self.log_dir = self.state.log_folder
        self.size = size or int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt: str, negative_prompt: str = "", steps=20, cfg_scale=5.0, seed=0, width=None,
                 height=None):
        """(image, info text): the prompt's <hypernet:...> tags applied, then removed again."""
        import torch
        try:
            text, tags = parse(prompt or "")
        except TagError as exc:
            return None, f"Error: {exc}"
        stack, applied, notes = [], [], []
        with self.state.library.one_scan():
            for name, strength in tags:
                try:
                    entry = self.state.resolve(name)
                    stack.append((self.state.library.load(entry), strength))
                    applied.append(Applied(name, entry, strength))
                except HypernetError as exc:
                    notes.append(f"{format_tag(name, strength)} not applied: {exc}")
        width, height = int(width or self.size), int(height or self.size)
        # Waiting here would hang the page for the rest of a training run; say so instead.
        if not self.lock.acquire(blocking=False):
            return None, "Not generated: a training run holds the model. Wait for it or press Interrupt."
        try:
            notes.extend(self.state.apply(self.pipe.unet, stack, applied))
            generator = torch.Generator().manual_seed(int(seed))
            image = self.pipe(text, negative_prompt=negative_prompt or None, num_inference_steps=int(steps),
                              guidance_scale=float(cfg_scale), generator=generator, width=width,
                              height=height).images[0]
        finally:
            self.state.detach()
            self.lock.release()
        used = ", ".join(format_tag(a.name, a.strength) for a in applied) or "none"
        info = f"{text}\nSteps: {int(steps)}, CFG scale: {float(cfg_scale):g}, Seed: {int(seed)}, " \
               f"Size: {width}x{height}, Hypernetworks: {used}"
        return image, "\n".join([info] + notes)

    # ------------------------------------------------------------------------------------------ cards
    def cards_html(self) -> str:
        """Every file in the folder as a card: name, widths, step, size and whether it fits the pipeline."""
        from ..ui.cards import card_facts, face_warning
        self.state.library.refresh()
        entries = self.state.entries()
        if not entries:
            return f"<p>No hypernetworks in {html.escape(self.state.folder())} yet. Create one.</p>"
        cards = []
        for entry in entries:
            name = self.state.card_name(entry, entries)
            facts = card_facts(self.state, entry, self.pipe.unet)
            warning = face_warning(facts)
            if facts.get("error"):
                detail = warning
            else:
                fit = warning or "fits this model"
                detail = (f"widths {', '.join(map(str, facts['dims']))} · step {facts['step']} · "
                          f"{facts['parameters']:,} parameters · {entry.format} · {fit}")
            cards.append(f"<div class='hypernet-card' data-name='{html.escape(name)}' style='border:1px solid #888;"
                         f"border-radius:6px;padding:6px;margin:4px'><b>{html.escape(name)}</b>"
                         f"<br><small>{html.escape(detail)}</small></div>")
        return "<div id='hypernet_card_list'>" + "".join(cards) + "</div>"

    def card_names(self) -> List[str]:
        return self.state.card_names()

    def insert_tag(self, prompt: str, name: Optional[str]) -> str:
        """The prompt with <hypernet:name:1> appended (once)."""
        if not name:
            return prompt
        tag = format_tag(name, 1.0)
        return prompt if tag in (prompt or "") else f"{prompt or ''} {tag}".strip()

    # ------------------------------------------------------------------------------------------ the UI
    def build(self):
        import gradio as gr
        from ..ui.tabs import Panel, build_create_tab, build_train_tab, wire
        panel = Panel(self.state, runtime=self.runtime, log_dir=self.log_dir)
        with gr.Blocks(title="hypernet", analytics_enabled=False) as blocks:
            gr.Markdown("## hypernet: create, train and try Stable Diffusion hypernetworks")
            with gr.Tabs():
                with gr.Tab("Generate", id="generate"):
                    gen = self._build_generate(gr)
                with gr.Tab("Hypernetworks", id="cards"):
                    cards = gr.HTML(self.cards_html(), elem_id="hypernet_cards")
                    refresh = gr.Button("Refresh", elem_id="hypernet_cards_refresh")
                with gr.Tab("Create", id="create"):
                    create = build_create_tab(gr, panel)
                with gr.Tab("Train", id="train"):
                    train = build_train_tab(gr, panel)
            events = wire(gr, panel, create, train)
            refreshed = [cards, gen["pick"]]
            refresh.click(self._refresh_all(gr), inputs=[], outputs=refreshed)
            for event in (events["create"], events["train"]):
                event.then(self._refresh_all(gr), inputs=[], outputs=refreshed)
        return blocks

    def launch(self, host: str = "127.0.0.1", port: int = 7861, open_browser: bool = False, block: bool = True,
               allowed_hosts=(), expose: bool = False):
        """Build and serve the app with a queue wide enough that progress and generation never wait on training;
        a non-loopback `host` needs `expose`, and only the served host names are answered."""
        import gradio as gr
        check_bind(host, port, expose)
        blocks = self.build()
        if int(gr.__version__.split(".")[0]) < 4:
            blocks.queue(concurrency_count=QUEUE_WORKERS)
        else:
            blocks.queue(default_concurrency_limit=QUEUE_WORKERS)
        with same_origin_apps(host, port, allowed_hosts):
            blocks.launch(server_name=host, server_port=port, inbrowser=open_browser, prevent_thread_lock=True,
                          show_api=False)
        if block:
            blocks.block_thread()
        return blocks

    def _refresh_all(self, gr):
        def refresh():
            return self.cards_html(), gr.update(choices=self.card_names())
        return refresh

    def _build_generate(self, gr) -> dict:
        c = {}
        with gr.Row():
            with gr.Column():
                c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="hypernet_gen_prompt",
                                         value="a red circle on the left, blue background",
                                         info="add <hypernet:name:strength> tags; several stack in order")
                c["negative"] = gr.Textbox(label="Negative prompt", elem_id="hypernet_gen_negative")
                with gr.Row():
                    c["pick"] = gr.Dropdown(choices=self.card_names(), label="Hypernetwork",
                                            elem_id="hypernet_gen_pick")
                    c["insert"] = gr.Button("Add to prompt", elem_id="hypernet_gen_insert")
                with gr.Row():
                    c["steps"] = gr.Number(value=GENERATE_DEFAULTS["steps"], precision=0, label="Steps")
                    c["cfg"] = gr.Number(value=GENERATE_DEFAULTS["cfg_scale"], label="CFG scale")
                    c["seed"] = gr.Number(value=GENERATE_DEFAULTS["seed"], precision=0, label="Seed")
                    c["size"] = gr.Number(value=self.size, precision=0, label="Width and height")
                c["go"] = gr.Button("Generate", variant="primary", elem_id="hypernet_gen_button")
            with gr.Column():
                c["image"] = gr.Image(label="Image", type="pil", interactive=False, elem_id="hypernet_gen_image")
                c["info"] = gr.Textbox(label="Info", lines=3, interactive=False, elem_id="hypernet_gen_info")
        c["insert"].click(self.insert_tag, inputs=[c["prompt"], c["pick"]], outputs=[c["prompt"]])
        c["go"].click(self._generate_click, inputs=[c["prompt"], c["negative"], c["steps"], c["cfg"], c["seed"],
                                                    c["size"]], outputs=[c["image"], c["info"]])
        return c

    def _generate_click(self, prompt, negative, steps, cfg, seed, size):
        return self.generate(prompt, negative, steps, cfg, seed, size, size)


def serve(model: Optional[str] = None, folder: str = "models/hypernetworks", log_dir: str = "logs",
          host: str = "127.0.0.1", port: int = 7861, open_browser: bool = False, block: bool = True,
          allow_any_path: bool = False, kind: str = "auto", prediction_type: str = "auto", allowed_hosts=(),
          expose: bool = False):
    """Load the model (the built-in tiny one by default), build the app and serve it; returns (studio, blocks).
    `allow_any_path`: training may write outside `folder` and `log_dir`; `kind` / `prediction_type`: as
    hosts.diffusers.load_pipeline takes them; `allowed_hosts`, `expose`: as Studio.launch takes them."""
    check_bind(host, port, expose)  # before the model loads
    from .models import load_pipeline
    pipe = load_pipeline(model or None, kind=kind, prediction_type=prediction_type)
    studio = Studio(pipe, folder, log_dir, allow_any_path=allow_any_path)
    return studio, studio.launch(host, port, open_browser, block, allowed_hosts, expose)


