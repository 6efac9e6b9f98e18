"""modules/processing.py, the parts of process_images that touch extra networks and infotext.

Per batch: prompts are sliced from all_prompts, tags parsed from them (extra_networks.parse_prompts), networks
activated, sd_hijack.model_hijack.comments copied into p.comment, then sampling; deactivate at the end only when the
prompt had extra-network data. p.comment(text) collects the text shown under the image; extra_generation_params go
into the infotext with infotext_utils.quote. Without a `sample` function, process_images samples the way a host's
preview needs: a seeded latent, a few denoising steps through sd_model.apply_model (the UNet, with whatever hooks
sit on it) and the latent's first three channels as the picture, in Processed.images as PIL images.
"""
import torch
from PIL import Image

from modules import extra_networks, infotext_utils, sd_hijack, shared


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", batch_size=1, n_iter=1, seed=1, steps=20, sd_model=None,
                 cfg_scale=7.0, width=512, height=512, do_not_save_grid=False, do_not_save_samples=False,
                 do_not_reload_embeddings=False):
        self._sd_model = sd_model
        self.cfg_scale, self.width, self.height = cfg_scale, width, height
        self.sampler_name = None
        self.closed = False
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.seed = seed
        self.steps = steps
        self.all_prompts = None
        self.prompts = None
        self.extra_generation_params = {}
        self.comments = {}
        self.disable_extra_networks = False
        self.extra_network_data = None
        self.is_hr_pass = False
        self.iteration = 0
        self.scripts = None

    @property
    def sd_model(self):
        return self._sd_model if self._sd_model is not None else shared.sd_model

    def close(self):
        self.closed = True

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        self.all_prompts = [self.prompt] * (self.batch_size * self.n_iter)

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class Processed:
    def __init__(self, p, outputs, prompts_seen):
        self.outputs = outputs
        self.prompts_seen = prompts_seen
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.info = create_infotext(p, p.all_prompts, 0)
        self.images = [o for o in outputs if isinstance(o, Image.Image)]


def create_infotext(p, all_prompts, index):
    params = {"Steps": p.steps, "Seed": p.seed, **p.extra_generation_params}
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{all_prompts[index]}{negative}\n{text}".strip()


def sample_latents(p):
    """A deterministic picture of what the model (and hooks on it) make of p.prompt at p.seed."""
    model = p.sd_model
    with torch.no_grad():
        gen = torch.Generator().manual_seed(int(p.seed))
        x = torch.randn((1, 4, p.height // 8, p.width // 8), generator=gen)
        cond = model.get_learned_conditioning([p.prompts[0]])
        for t in torch.linspace(900, 100, min(int(p.steps), 4)):
            x = x - 0.2 * model.apply_model(x, t.long().view(1), cond)
    pixels = ((torch.tanh(x[0, :3]) + 1) * 127.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((p.width, p.height), Image.NEAREST)


def process_images(p, sample=sample_latents):
    """Run `sample(p)` once per batch the way process_images_inner drives extra networks."""
    sd_hijack.model_hijack.clear_comments()
    p.setup_prompts()
    outputs, seen = [], []
    for n in range(p.n_iter):
        p.iteration = n
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        for comment in sd_hijack.model_hijack.comments:
            p.comment(comment)
        seen.append(list(p.prompts))
        outputs.append(sample(p))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    return Processed(p, outputs, seen)
