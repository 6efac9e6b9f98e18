"""modules/hypernetworks/hypernetwork.py, the built-in path: list_hypernetworks (recursive *.pt by stem) and
load_hypernetworks, which fills shared.loaded_hypernetworks (applied by the webui's hijacked attention)."""
import glob
import os

from modules import shared


class BuiltinHypernetwork:
    def __init__(self, name, filename, multiplier):
        self.name, self.filename, self.multiplier = name, filename, multiplier


def list_hypernetworks(path):
    res = {}
    for filename in sorted(glob.iglob(os.path.join(path, "**/*.pt"), recursive=True), key=str.lower):
        name = os.path.splitext(os.path.basename(filename))[0]
        if name != "None":
            res[name] = filename
    return res


def load_hypernetworks(names, multipliers=None):
    shared.loaded_hypernetworks.clear()
    for i, name in enumerate(names):
        path = shared.hypernetworks.get(name)
        if path is None:
            continue  # the built-in skips unknown names silently
        shared.loaded_hypernetworks.append(BuiltinHypernetwork(name, path, multipliers[i] if multipliers else 1.0))
