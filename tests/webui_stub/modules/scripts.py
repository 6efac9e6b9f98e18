"""modules/scripts.py: what extensions read to find another script. load_scripts imports each script file as a
module named after its file (script_loading.load_module: spec_from_file_location(os.path.basename(path), path)) and
keeps one ScriptClassData per Script subclass in `scripts_data` (scripts.py:377-503)."""
import importlib.util
import os
from collections import namedtuple

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class Script:
    def title(self):
        return ""


def load_script(path):
    """Import a script file the way load_scripts does and record its Script classes; returns the module."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script:
            scripts_data.append(ScriptClassData(obj, path, os.path.dirname(path), module))
    return module
