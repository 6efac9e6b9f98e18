"""A hypernetwork file's metadata and layer shapes, read without its weights (for cards and API listings).

The facts come from the same reading path as a full load (`hypernet.fileformat.files.inspect`): the same structure,
size and layout checks, with the weights left unread. A file the cards call loadable therefore loads.
"""
from __future__ import annotations

from ..config import made_for
from ..fileformat.compat import summary
from ..fileformat.files import inspect, readers_of


def read(path: str) -> dict:
    """Plain, JSON-ready facts about a hypernetwork file; raises HypernetError if it would not load."""
    return from_hypernetwork(inspect(path))


def from_hypernetwork(hn) -> dict:
    """The same facts from a Hypernetwork, loaded or inspected."""
    c = hn.config
    readers = dict(hn.readers or readers_of(hn, "pt"))  # a Hypernetwork not read from a file: as we would save it
    return {"name": c.name, "dims": hn.dims, "layer_structure": list(c.layer_structure), "activation": c.activation,
            "layer_norm": c.layer_norm, "dropout_structure": list(c.dropout_structure),
            "activate_output": c.activate_output, "weight_init": c.weight_init, "step": hn.step,
            "sd_checkpoint": hn.sd_checkpoint, "sd_checkpoint_name": hn.sd_checkpoint_name,
            "optional_info": hn.optional_info, "parameters": hn.parameter_count(), "made_for": made_for(hn.dims),
            "readers": readers, "same_math": summary(readers)}
