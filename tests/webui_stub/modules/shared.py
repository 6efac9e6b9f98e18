"""modules/shared.py: opts, cmd_opts, state, OptionInfo/options_section, the built-in hypernetwork lists, and
sd_model as a module property (modules/shared_items.py swaps the module class so that reading it goes through
sd_models.model_data.get_sd_model())."""
import os
import sys
from types import SimpleNamespace

from modules import options, shared_state
from modules.paths_internal import data_path, models_path  # noqa: F401  (re-exported, as the real one does)

# as if started with --api (the webui's default is without; tests set api=False to see the difference)
cmd_opts = SimpleNamespace(hypernetwork_dir=os.path.join(models_path, "hypernetworks"), no_hashing=False,
                           api=True, nowebui=False, api_auth=None)

OptionInfo = options.OptionInfo
options_section = options.options_section

options_templates = {
    "sd_hypernetwork": OptionInfo("None", "Add hypernetwork to prompt", None,
                                  lambda: {"choices": ["None", *hypernetworks]}),
    "extra_networks_default_multiplier": OptionInfo(1.0, "Default multiplier for extra networks"),
    "samples_format": OptionInfo("png", "File format for images"),
}
for _key, _info in options_templates.items():
    _info.section = ("extra_networks", "Extra Networks")
opts = options.Options(options_templates)

state = shared_state.State()
hypernetworks = {}          # file stem -> path, the built-in list (.pt only)
loaded_hypernetworks = []   # what the built-in hijacked attention applies


def reload_hypernetworks():
    from modules.hypernetworks import hypernetwork
    global hypernetworks
    hypernetworks = hypernetwork.list_hypernetworks(cmd_opts.hypernetwork_dir)


class Shared(sys.modules[__name__].__class__):
    @property
    def sd_model(self):
        from modules import sd_models
        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models
        sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
