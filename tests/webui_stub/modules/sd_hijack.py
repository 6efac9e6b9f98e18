"""modules/sd_hijack.py: model_hijack.comments (cleared per generation, copied into p.comment per batch)."""


class StableDiffusionModelHijack:
    def __init__(self):
        self.comments = []
        self.extra_generation_params = {}

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}


model_hijack = StableDiffusionModelHijack()
