import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(os.environ.get("HYPERNET_FIXTURES", ROOT.parent / "shared" / "fixtures" / "a1111-reference"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "manifest.json").exists():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; set HYPERNET_FIXTURES to the a1111-reference folder")
    return FIXTURES
