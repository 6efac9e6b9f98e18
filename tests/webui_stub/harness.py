"""Puts the stand-in `modules` on sys.path for one test and starts a pretend webui with the extension loaded.

Not a conftest: only the webui tests import it, and nothing here runs at import time.
"""
from __future__ import annotations

import contextlib
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

STUB = Path(__file__).resolve().parent
ROOT = STUB.parents[1]
EXTENSION_SCRIPT = ROOT / "scripts" / "hypernet_extension.py"


def _purge() -> None:
    for name in list(sys.modules):
        if name == "modules" or name.startswith("modules.") or name.startswith("hypernet.webui"):
            del sys.modules[name]


@contextlib.contextmanager
def stub_modules(tmp_path: Path):
    """Fresh stand-in modules, configured with folders under tmp_path; removed again afterwards."""
    _purge()
    sys.path.insert(0, str(STUB))
    import torch
    real_torch_load = torch.load
    try:
        import importlib
        importlib.import_module("modules.safe")  # the webui's first import: torch.load becomes its checked loader
        paths_internal = importlib.import_module("modules.paths_internal")
        paths_internal.data_path = str(tmp_path / "webui-data")
        paths_internal.models_path = str(tmp_path / "webui-data" / "models")
        shared = importlib.import_module("modules.shared")
        shared.cmd_opts.hypernetwork_dir = str(tmp_path / "webui-data" / "models" / "hypernetworks")
        Path(shared.cmd_opts.hypernetwork_dir).mkdir(parents=True)
        yield SimpleNamespace(**{name: importlib.import_module(f"modules.{name}") for name in (
            "shared", "extra_networks", "ui_extra_networks", "script_callbacks", "sd_hijack", "sd_models",
            "processing", "infotext_utils", "hashes", "call_queue", "errors", "initialize", "scripts")},
            folder=Path(shared.cmd_opts.hypernetwork_dir), start=start)
    finally:
        torch.load = real_torch_load
        if "hypernet.webui.state" in sys.modules:
            sys.modules["hypernet.webui.state"].reset_state()
        from hypernet.ui.settings import set_reader
        set_reader(None)  # hypernet.ui stays imported: forget the webui's settings reader
        sys.path.remove(str(STUB))
        _purge()


XYZ_SCRIPT = STUB / "scripts" / "xyz_grid.py"


def start(app=None, *, settings: bool = True, xyz: bool = True) -> None:
    """What the webui does at start-up: load scripts (the X/Y/Z plot among the webui's own, unless xyz=False, then
    the extension's), register built-ins, before_ui, create the UI (which registers settings), app_started."""
    from modules import initialize, script_callbacks, scripts

    def load_scripts():
        if xyz:
            scripts.load_script(str(XYZ_SCRIPT))
        runpy.run_path(str(EXTENSION_SCRIPT), run_name="hypernet_extension")

    initialize.initialize_rest(load_scripts)
    script_callbacks.before_ui_callback()
    if settings:
        script_callbacks.ui_settings_callback()
    script_callbacks.app_started_callback(None, app)
