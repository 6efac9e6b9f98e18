import sys
import types

import torch


def test_webui_host_reencodes_without_the_emphasis_mean_rescale_when_it_is_0_over_0(monkeypatch):
    """The webui's "Original" emphasis does z * (z.mean() / (z * mults).mean()): NaN when the mean is exactly 0."""
    from hypernet.hosts.webui import WebuiHost
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(CLIP_stop_at_last_layers=1, emphasis="Original"))
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(shared=shared))
    monkeypatch.setitem(sys.modules, "modules.shared", shared)

    def get_learned_conditioning(texts):
        z = torch.tensor([[[1.0, -1.0]]]).repeat(len(texts), 3, 1)   # mean exactly 0, like a bias-free layer norm
        if shared.opts.emphasis == "Original":
            m = z.mean()
            z = z * (m / z.mean())
        return z

    host = WebuiHost.__new__(WebuiHost)
    host.device = torch.device("cpu")
    host.sd_model = types.SimpleNamespace(get_learned_conditioning=get_learned_conditioning)
    cond = host.encode_prompts(["a"])
    assert torch.isfinite(cond).all() and torch.equal(cond[0, 0], torch.tensor([1.0, -1.0]))
    assert shared.opts.emphasis == "Original"
