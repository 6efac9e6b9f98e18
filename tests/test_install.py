"""install.py as both launchers run it: `python install.py` (so __name__ == "__main__") with the host's root on
PYTHONPATH, in an environment that lacks a package."""
import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_STUB = '''"""Stand-in for the host's launch.py: run_pip only records what it was asked to install."""
import json, os


def run_pip(command, desc=None, live=False):
    with open(os.environ["PIP_CALLS"], "a") as fh:
        fh.write(json.dumps(command) + "\\n")
'''


def _environment(tmp_path, present):
    """A bare venv whose only importable extras are empty stand-ins for the modules in `present`."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, system_site_packages=False)
    stubs = tmp_path / "stubs"
    for module in present:
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__init__.py").write_text("")
    site = next(env_dir.glob("lib/python*/site-packages"), None) or env_dir / "Lib" / "site-packages"
    (site / "stubs.pth").write_text(str(stubs) + "\n")
    host_root = tmp_path / "webui"
    host_root.mkdir()
    (host_root / "launch.py").write_text(LAUNCH_STUB)
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    return python, host_root


def _run_like_the_launcher(tmp_path, present):
    python, host_root = _environment(tmp_path, present)
    calls = tmp_path / "pip_calls.jsonl"
    calls.write_text("")
    env = {"PYTHONPATH": str(host_root), "PIP_CALLS": str(calls), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(python), str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                       cwd=host_root, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_installs_exactly_what_is_missing_and_never_torch(tmp_path):
    calls = _run_like_the_launcher(tmp_path, present=["numpy", "PIL", "tqdm"])
    assert calls == ['install "safetensors>=0.4"']


def test_installs_nothing_when_everything_is_there(tmp_path):
    assert _run_like_the_launcher(tmp_path, present=["numpy", "PIL", "tqdm", "safetensors"]) == []


def test_importing_it_installs_nothing(monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("hypernet_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran pip")))
    spec.loader.exec_module(module)
    assert "torch" not in " ".join(module.REQUIRED.values())
