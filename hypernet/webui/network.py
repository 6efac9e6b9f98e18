"""The <hypernet:...> prompt tag inside the webui: an ExtraNetwork named 'hypernet' that replaces the built-in.

Imported only from the webui entry point (it subclasses the webui's class at import time).

How the webui drives it (v1.10.1, read in modules/extra_networks.py and modules/processing.py):
- Tags are cut from the first prompt of each batch and passed as ExtraNetworkParams (`.items` are the ':'-separated
  strings); every registered network is activated, with an empty list when its tag is absent, and again for the
  hires-fix pass. `deactivate` runs at the end only when the prompt had some extra-network tag (processing.py:1132),
  so an activation with an empty list is what reliably turns us off.
- The built-in handler (modules/extra_networks_hypernet.py) loads files into `shared.loaded_hypernetworks`, which
  the hijacked attention applies (`apply_hypernetworks`, hypernetworks/hypernetwork.py:370). Registering ours under
  the same name replaces it, and we also keep that list empty, so the built-in path never applies anything twice.
"""
from __future__ import annotations

from typing import List, Optional

from modules import extra_networks

from ..errors import HypernetError, NotFoundError, TagError
from ..tags import drop_empty, parse_args, shown
from ..ui.settings import value
from ..ui.state import Applied
from . import messages
from .infotext import HASHES_FIELD, infotext_name
from .settings import webui_option
from .state import HypernetState, clear_builtin, get_state
from .xyz import FILE_LABEL, PENDING, STRENGTH_LABEL


class ExtraNetworkHypernet(extra_networks.ExtraNetwork):
    def __init__(self, state: Optional[HypernetState] = None):
        super().__init__("hypernet")
        self._state = state

    @property
    def state(self) -> HypernetState:
        return self._state or get_state()

    # ------------------------------------------------------------------------------------------ activate
    def activate(self, p, params_list):
        clear_builtin()
        state = self.state
        params_list = list(params_list or [])
        self._add_from_setting(p, params_list, state)

        stack, applied, problems = [], [], self._drop_empty_tags(p)
        if not params_list and getattr(p, PENDING, None) is not None:
            problems.append(f"{STRENGTH_LABEL} (X/Y/Z plot): the prompt has no <hypernet:name> tag, so nothing was "
                            f"applied; add one, or add a {FILE_LABEL} axis")
        with state.library.one_scan():  # one folder listing for every tag of this generation
            for params in params_list:
                items = [str(item) for item in (params.items or [])]
                tag = shown(f"<hypernet:{':'.join(items)}>")
                try:
                    name, strength = parse_args(items, tag)
                except TagError as exc:
                    problems.append(str(exc))
                    continue
                strength = self._default_strength(items, strength)
                try:
                    entry = state.resolve(name)
                    hn = state.library.load(entry)
                except NotFoundError as exc:
                    problems.append(str(exc))
                    continue
                except HypernetError as exc:
                    problems.append(f"{tag} not applied: {exc}")
                    continue
                except Exception as exc:  # an unexpected failure must not stop the generation
                    messages.report_error(f"hypernet: loading {name!r} failed")
                    problems.append(f"{tag} not applied: {type(exc).__name__}: {exc}")
                    continue
                stack.append((hn, strength))
                applied.append(Applied(name, entry, strength))

        unet = None
        if stack:  # never touch p.sd_model for an empty list: that call also comes while a model is loading
            model = getattr(p, "sd_model", None)
            unet = state.unet_of(model if model is not None else state.loaded_model(load=False))
            if unet is None:
                problems.append("no model is loaded, so no hypernetwork was applied")
        fit_warnings = state.apply(unet, stack, applied)
        if value("warn_width_mismatch"):
            problems.extend(fit_warnings)
        for text in problems:
            messages.warn(p, text)
        if unet is not None and value("infotext_hashes"):
            self._write_hashes(p, applied, state)

    @staticmethod
    def _drop_empty_tags(p) -> List[str]:
        """Take <hypernet:> out of the prompts the model reads (the webui's pattern never matches it); its warnings."""
        problems: List[str] = []
        for attr in ("prompts", "hr_prompts"):
            prompts = getattr(p, attr, None)
            if isinstance(prompts, list):
                cleaned = [drop_empty(str(prompt)) for prompt in prompts]
                setattr(p, attr, [text for text, _ in cleaned])
                problems.extend(str(exc) for _, errors in cleaned for exc in errors)  # warn() shows each text once
        return problems

    @staticmethod
    def _default_strength(items: List[str], strength):
        """parse_args reads a missing strength as 1.0; use the "default strength" setting instead."""
        if any(item.strip() and "=" not in item for item in items[1:]):
            return strength
        default = value("default_strength")
        if isinstance(strength, dict):
            return {**strength, "all": default}
        return default

    @staticmethod
    def _add_from_setting(p, params_list, state: HypernetState) -> None:
        """The "Add hypernetwork to prompt" setting (opts.sd_hypernetwork), as the built-in handles it."""
        extra = webui_option("sd_hypernetwork", "None")
        if not extra or extra == "None":
            return
        if any(params.items and str(params.items[0]) == extra for params in params_list):
            return
        try:
            state.resolve(extra)
        except HypernetError:
            return  # the built-in also ignores a setting that names no file
        multiplier = webui_option("extra_networks_default_multiplier", 1.0)
        text = f"<hypernet:{extra}:{multiplier}>"
        prompts = getattr(p, "all_prompts", None)
        if isinstance(prompts, list):  # the tag shows in the infotext; the hires pass must not add it twice
            p.all_prompts = [prompt if f"<hypernet:{extra}:" in prompt else f"{prompt}{text}" for prompt in prompts]
        params_list.append(extra_networks.ExtraNetworkParams(items=[extra, str(multiplier)]))

    @staticmethod
    def _write_hashes(p, applied: List[Applied], state: HypernetState) -> None:
        """"Hypernet hashes: name: shorthash, ..." in the infotext (the webui quotes the value itself)."""
        params = getattr(p, "extra_generation_params", None)
        if not isinstance(params, dict):
            return
        if not getattr(p, "is_hr_pass", False) or not isinstance(getattr(p, "hypernet_hashes", None), dict):
            p.hypernet_hashes = {}
        for item in applied:
            short = state.shorthash(item.entry, compute=True)
            name = infotext_name(item.name)
            if short and name:
                p.hypernet_hashes[name] = short
        if p.hypernet_hashes:
            params[HASHES_FIELD] = ", ".join(f"{k}: {v}" for k, v in p.hypernet_hashes.items())
        else:
            params.pop(HASHES_FIELD, None)

    # ------------------------------------------------------------------------------------------ deactivate
    def deactivate(self, p):
        """Unhook: after a generation the UNet is exactly as loaded (the built-in left its networks applied)."""
        self.state.detach()

