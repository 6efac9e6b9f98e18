"""modules/paths_internal.py: data_path (--data-dir) and models_path. Tests point them at a temporary folder."""
import os
import tempfile

data_path = os.path.join(tempfile.gettempdir(), "webui-stub-data")
models_path = os.path.join(data_path, "models")
