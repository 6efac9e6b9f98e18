"""webui entry point: make the repo importable, then hand over to hypernet.webui."""
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _root not in sys.path:
    sys.path.insert(0, _root)

from hypernet.webui import register  # noqa: E402

register()
