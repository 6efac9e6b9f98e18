"""modules/sd_models.py: model_data holds the loaded model; shared.sd_model reads it through get_sd_model() (which
loads a checkpoint on first use in the webui; here it only returns what a test set)."""


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.was_loaded_at_least_once = False
        self.get_calls = 0

    def get_sd_model(self):
        self.get_calls += 1
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        self.was_loaded_at_least_once = True


model_data = SdModelData()
