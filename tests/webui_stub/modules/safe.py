"""Stand-in for the webui's modules/safe.py: importing it replaces torch.load with a checked loader.

As in the webui, the check allows only certain zip member names and globals, and a refused file makes
torch.load print a message and return None instead of raising. Files torch >= 2.2 writes carry
`.format_version` and `.storage_alignment` members, so this loader refuses them: extension code that reads
hypernetworks through torch.load gets None for them, as it would inside the real webui.
"""
import collections
import pickle
import re
import zipfile

import torch

unsafe_torch_load = torch.load
allowed_zip_names_re = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
_ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
            ("torch", "IntStorage"), ("torch", "LongStorage"), ("torch", "DoubleStorage"), ("torch", "ByteStorage"),
            ("torch", "BFloat16Storage"), ("torch", "float32"), ("builtins", "set")}


class RestrictedUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return None

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise Exception(f"global '{module}/{name}' is forbidden")
        return collections.OrderedDict if (module, name) == ("collections", "OrderedDict") else (lambda *a: None)


def check_pt(filename):
    try:
        with zipfile.ZipFile(filename) as z:
            for name in z.namelist():
                if not allowed_zip_names_re.match(name):
                    raise Exception(f"bad file inside {filename}: {name}")
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
            if len(pkl) != 1:
                raise Exception(f"data.pkl not found in {filename}")
            with z.open(pkl[0]) as fh:
                RestrictedUnpickler(fh).load()
    except zipfile.BadZipfile:
        with open(filename, "rb") as fh:
            unpickler = RestrictedUnpickler(fh)
            for _ in range(5):
                unpickler.load()


def load(filename, *args, **kwargs):
    try:
        check_pt(filename)
    except Exception as exc:
        print(f"Error verifying pickled file from {filename}: {exc}\nThe file may be malicious, so the program is "
              "not going to read it.")
        return None
    return unsafe_torch_load(filename, *args, **kwargs)


torch.load = load
