"""Everything that touches the webui's `modules` lives here and is imported only inside the webui.

What the webui's tabs share with the standalone UI (tabs, actions, jobs, state, settings table, card facts) is
hypernet/ui/, which never imports `modules`; this package subclasses or plugs into it. One file per concern (the
layout of the webui's own extensions-builtin/Lora):
    state.py     HypernetState: ui/state.py's LibraryState over the webui's folder, model and hash cache
    network.py   the 'hypernet' ExtraNetwork: <hypernet:name:strength> tags      (imports modules at import time)
    page.py      the "Hypernetworks" cards page                                   (imports modules at import time)
    infotext.py  "Hypernet hashes" and legacy "Hypernet:" fields when pasting
    settings.py  the "Hypernet" settings section, and the reader that makes ui/settings.value() read it
    messages.py  warnings under the image, in the console, as a popup
    training.py  WebuiRuntime: a training job (ui/jobs.py) queued behind generations
    ui.py        where the tabs (ui/tabs.py) go: under Train in AUTOMATIC1111, a top-level tab in Forge
    xyz.py       "Hypernet strength" and "Hypernet file" axes for the X/Y/Z plot script
    api.py       /hypernet/v1/ routes

Only register() is called from scripts/hypernet_extension.py; network.py and page.py are imported from the
callbacks, once the webui is up.
"""
import logging

log = logging.getLogger("hypernet")


def before_ui() -> None:
    """Replace the built-in 'hypernet' network and Hypernetworks page with ours.

    The webui registers its defaults in initialize (modules/initialize.py:163-168), before on_before_ui runs
    (webui.py:61), and `register_extra_network` stores by name, so registering 'hypernet' here replaces the built-in.
    """
    from modules import extra_networks
    from .network import ExtraNetworkHypernet
    from .page import ExtraNetworksPageHypernetworks, install_page
    from .state import clear_builtin

    extra_networks.register_extra_network(ExtraNetworkHypernet())
    clear_builtin()
    install_page(ExtraNetworksPageHypernetworks())
    from .xyz import register_axes
    try:
        register_axes()
    except Exception:  # another extension's changes to the plot script must not stop the webui from starting
        log.exception("hypernet: could not add the X/Y/Z plot axes")


def model_loaded(sd_model) -> None:
    """A checkpoint was (re)loaded: drop hooks on the previous UNet and recompute fits for the cards."""
    from .state import get_state
    get_state().model_changed()


def script_unloaded() -> None:
    """Before a UI reload (or shutdown): unhook the UNet, give back the settings dropdown we re-pointed.
    Training jobs keep running; their state survives because this package stays imported."""
    from .settings import restore_add_to_prompt
    from .state import get_state
    from .ui import reset
    get_state().detach()
    restore_add_to_prompt()
    reset()


def register() -> None:
    """Register the extension's callbacks with the running webui."""
    from modules import script_callbacks

    from . import api, infotext, messages, settings, ui

    messages.ensure_console_handler()
    settings.register_reader()
    script_callbacks.on_before_ui(before_ui, name="hypernet_before_ui")
    script_callbacks.on_ui_settings(settings.on_ui_settings, name="hypernet_settings")
    script_callbacks.on_infotext_pasted(infotext.on_infotext_pasted, name="hypernet_infotext")
    script_callbacks.on_ui_train_tabs(ui.on_ui_train_tabs, name="hypernet_train_tabs")
    script_callbacks.on_ui_tabs(ui.on_ui_tabs, name="hypernet_tabs")
    script_callbacks.on_app_started(api.on_app_started, name="hypernet_api")
    script_callbacks.on_model_loaded(model_loaded, name="hypernet_model_loaded")
    script_callbacks.on_script_unloaded(script_unloaded, name="hypernet_unload")
