import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The tiny test models' ops are far too small to gain from threads, and on a busy 2-core machine OpenMP's spinning
# threads made single modules take minutes instead of seconds.
torch.set_num_threads(1)
FIXTURES = ROOT / "tests" / "fixtures" / "a1111-reference"  # files made by the webui itself; see its README.md


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "manifest.json").exists():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; they are part of the repository, so restore them")
    return FIXTURES


def _unused_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """Call it for a loopback TCP port nothing listens on right now, for a server a test starts."""
    return _unused_loopback_port
