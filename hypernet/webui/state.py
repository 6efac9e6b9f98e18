"""The extension's runtime state inside the webui: HypernetState, a LibraryState (ui/state.py) that reads the webui.

`get_state()` returns the one HypernetState of this process (the only module-level object: a registry of one). It
overrides only what the webui decides: the folder (`--hypernetwork-dir`), the webui's own hypernetwork list on
refresh, the loaded model and its UNet (Forge's too), the webui's hash cache (cache.json) and its data folder.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from ..library import Entry
from ..ui.state import LibraryState


class HypernetState(LibraryState):
    """The state over the webui's folder and loaded model; `folder` given (tests) replaces --hypernetwork-dir."""

    # ------------------------------------------------------------------------------------------ folder, library
    def folder(self) -> str:
        """The webui's hypernetwork folder (--hypernetwork-dir, default models/hypernetworks)."""
        if self._folder is not None:
            return self._folder
        from modules import shared
        return os.path.abspath(shared.cmd_opts.hypernetwork_dir)

    def data_folder(self) -> str:
        """The webui's data folder (--data-dir), where its built-in Train tab logs to textual_inversion."""
        try:
            from modules import paths_internal
            return paths_internal.data_path
        except (ImportError, AttributeError):
            return super().data_folder()

    def refresh(self) -> List[Entry]:
        """Rescan the folder (and the webui's own list, which its built-in Train tab reads)."""
        entries = super().refresh()
        try:
            from modules import shared
            shared.reload_hypernetworks()
        except Exception:  # not in a webui, or a fork without the built-in list
            pass
        return entries

    # ------------------------------------------------------------------------------------------ the loaded model
    @staticmethod
    def loaded_model(load: bool = False):
        """The webui's current model; without `load`, never triggers loading one (shared.sd_model would)."""
        from modules import shared
        if not load:
            try:
                from modules import sd_models
                return sd_models.model_data.sd_model
            except (ImportError, AttributeError):
                pass
        return shared.sd_model

    @staticmethod
    def unet_of(sd_model):
        """The UNet of a webui model: ldm (SD1/2) and sgm (SDXL) keep it at .model.diffusion_model, Forge in its
        UnetPatcher's KModel (whose clones share that module, so hooks reach every clone)."""
        from ..hosts.webui import forge_kmodel
        model = forge_kmodel(sd_model) or getattr(sd_model, "model", None)
        return getattr(model, "diffusion_model", None)

    # ------------------------------------------------------------------------------------------ hashes
    @staticmethod
    def hash_title(entry: Entry) -> str:
        """Key in the webui's hash cache; for a top-level .pt the same as the built-in's `hypernet/<stem>`."""
        stem = os.path.splitext(entry.relpath)[0]
        return f"hypernet/{stem}" + (".safetensors" if entry.format == "safetensors" else "")

    def hash_source(self, entry: Entry, compute: bool) -> Optional[str]:
        """The webui's hash cache (cache.json), hashing into it only when `compute`; None when unknown, or when the
        webui runs with --no-hashing. Outside a webui, the Library's."""
        try:
            from modules import hashes
        except ImportError:
            return super().hash_source(entry, compute)
        digest = hashes.sha256_from_cache(entry.path, self.hash_title(entry))
        if digest is None and compute:
            digest = hashes.sha256(entry.path, self.hash_title(entry))
        return digest


def clear_builtin() -> None:
    """Empty the webui's own list of applied hypernetworks (shared.loaded_hypernetworks), so that its hijacked
    attention (`apply_hypernetworks`, modules/hypernetworks/hypernetwork.py) adds nothing."""
    try:
        from modules import shared
    except ImportError:
        return
    loaded = getattr(shared, "loaded_hypernetworks", None)
    if isinstance(loaded, list):
        loaded.clear()


_registry: Dict[str, HypernetState] = {}


def get_state() -> HypernetState:
    """The extension state of this process."""
    state = _registry.get("state")
    if state is None:
        state = _registry.setdefault("state", HypernetState())
    return state


def reset_state() -> None:
    """Drop the state (hooks removed); the next get_state() starts afresh. For unloading and tests."""
    state = _registry.pop("state", None)
    if state is not None:
        state.close()
