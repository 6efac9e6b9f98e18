"""hypernet/ui/ (what the webui tabs and the standalone UI share) never reaches for the webui's `modules`."""
import ast
import subprocess
import sys
from pathlib import Path

UI = Path(__file__).resolve().parents[1] / "hypernet" / "ui"

# Imports every module under hypernet/ui/ and hypernet.apps.standalone with a finder that refuses `modules`.
REFUSE_MODULES = r"""
import importlib, pkgutil, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "modules" or name.startswith("modules."):
            raise ImportError(f"the webui's {name} was imported")
        return None

sys.meta_path.insert(0, Refuse())
import hypernet.ui
names = ["hypernet.ui." + m.name for m in pkgutil.iter_modules(hypernet.ui.__path__)] + ["hypernet.apps.standalone"]
for name in names:
    importlib.import_module(name)
print(" ".join(sorted(n for n in sys.modules if n.startswith("hypernet.webui"))) or "no-webui")
"""


def _imports_modules(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "modules" or a.name.startswith("modules.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        name = node.module or ""
        return node.level == 0 and (name == "modules" or name.startswith("modules."))
    return False


def test_no_source_under_hypernet_ui_imports_the_webuis_modules():
    files = sorted(UI.rglob("*.py"))
    assert files
    offenders = [f"{path.name}:{node.lineno}" for path in files
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))) if _imports_modules(node)]
    assert offenders == []


def test_importing_the_ui_package_and_the_standalone_ui_never_tries_modules():
    done = subprocess.run([sys.executable, "-c", REFUSE_MODULES], capture_output=True, text=True, timeout=300,
                          cwd=UI.parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["no-webui"]   # nor anything of hypernet/webui/


def test_a_studio_state_works_without_modules(tmp_path):
    """The state, cards and settings the standalone UI uses, driven with `modules` refused."""
    script = REFUSE_MODULES + rf"""
import hypernet
from hypernet.apps.standalone import StandaloneState
from hypernet.ui.cards import card_facts
from hypernet.ui.settings import value
folder = {str(tmp_path)!r}
hypernet.create(dims=[32], name="one").save(folder + "/one.pt")
state = StandaloneState(folder, pipe=None, log_folder=folder + "/logs")
state.refresh()
[entry] = state.entries()
assert card_facts(state, entry, None)["dims"] == [32]
assert len(state.sha256(entry)) == 64 and value("cache_size") == 4
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=UI.parents[1])
    assert done.returncode == 0, done.stderr
