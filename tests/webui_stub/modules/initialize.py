"""modules/initialize.py: initialize_rest loads the extension scripts first and registers the built-in pages and
extra networks after them (initialize.py:110-168), which is why extensions replace built-ins in on_before_ui."""
from modules import extra_networks, script_callbacks, shared, ui_extra_networks


def initialize_rest(load_scripts=lambda: None):
    script_callbacks.clear_callbacks()  # modules/scripts.py:load_scripts does this before importing scripts
    load_scripts()
    shared.reload_hypernetworks()
    ui_extra_networks.initialize()
    ui_extra_networks.register_default_pages()
    extra_networks.initialize()
    extra_networks.register_default_extra_networks()
