"""hypernet.attach on real (tiny) UNets: the original ldm UNetModel and diffusers UNet2DConditionModel shaped like
SD1, SD2 and SDXL. The hooked output is checked against the webui's formula written out by hand below."""
from __future__ import annotations

import contextlib
import copy
import functools
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import hypernet
from hypernet import HypernetWarning

from models import CROSS_WIDTH, SELF_WIDTHS, call_unet, set_dtype, tiny_diffusers_unet, tiny_ldm_unet, unet_inputs

KINDS = ["ldm", "sd1", "sd2", "sdxl"]
LDM_CONTEXT = 48  # distinct from the ldm UNet's self-attention widths (32, 64), so self and cross are told apart
WIDTHS = {**{k: SELF_WIDTHS[k] + [CROSS_WIDTH[k]] for k in CROSS_WIDTH}, "ldm": SELF_WIDTHS["ldm"] + [LDM_CONTEXT]}
TIGHT = dict(rtol=1e-5, atol=1e-6)
MARGIN = 0.05  # a hooked output must differ from the base output by more than this (max abs); outputs are ~1


# ---------------------------------------------------------------- fixtures and helpers

def make_unet(kind: str) -> nn.Module:
    """A fresh tiny UNet, the same weights every time (building one is faster than deep-copying one)."""
    return tiny_ldm_unet(context_dim=LDM_CONTEXT) if kind == "ldm" else tiny_diffusers_unet(kind)


@functools.lru_cache(maxsize=None)
def _hn(dims: tuple, seed: int, options: tuple) -> hypernet.Hypernetwork:
    hn = hypernet.create(dims=list(dims), seed=seed, name=f"hn{seed}", **dict(options))
    # The webui's Normal init (std 0.01) changes the output by ~1e-4; give every layer weights large enough that the
    # hypernetwork changes the UNet output clearly, so a hook that does nothing cannot pass.
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for layer in hn.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / layer.in_features ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)
            elif isinstance(layer, nn.LayerNorm):
                layer.weight.copy_(1 + torch.randn(layer.weight.shape, generator=gen) * 0.1)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)
    return hn


def make_hn(dims, seed: int = 0, **options) -> hypernet.Hypernetwork:
    """A fresh hypernetwork with clearly non-trivial weights. The layer structure defaults to [1, 0.5, 1] to keep
    the 2048-wide SDXL modules small; tests that name the webui default pass layer_structure=(1, 2, 1)."""
    options.setdefault("layer_structure", (1, 0.5, 1))
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return copy.deepcopy(_hn(tuple(dims), seed, tuple(sorted(options.items()))))


def run(unet, seed: int = 0, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return call_unet(unet, **unet_inputs(unet, seed=seed, **kwargs))


def hooked_hooks(unet) -> int:
    """Forward pre-hooks currently on to_k / to_v projections."""
    return sum(len(m.to_k._forward_pre_hooks) + len(m.to_v._forward_pre_hooks)
               for m in unet.modules() if hasattr(m, "to_k") and hasattr(m, "to_v"))


# ---------------------------------------------------------------- the webui's math, written out independently

def _strengths(strength):
    if isinstance(strength, dict):
        base = strength.get("all", 1.0)
        return strength.get("self", base), strength.get("cross", base)
    return strength, strength


def webui_context(stack, context: torch.Tensor, which: int, cross: bool) -> torch.Tensor:
    """apply_hypernetworks (webui hypernetwork.py): for each hypernetwork in order, pick the (k, v) pair by
    context.shape[2]; a missing width passes through; each module computes x + linear(x) * strength."""
    for hn, strength in stack:
        width = context.shape[2]
        if not hn.has_dim(width):
            continue
        module = hn.modules_for(width)[which]
        s = _strengths(strength)[1 if cross else 0]
        context = context + module.linear(context) * s
    return context


def _ldm_webui_forward(self, x, context=None, mask=None, *, stack):
    # ldm CrossAttention.forward with the webui's hypernetwork step (hypernetwork.py attention_CrossAttention_forward)
    from einops import rearrange

    h = self.heads
    q = self.to_q(x)
    cross = context is not None
    context = context if context is not None else x
    k = self.to_k(webui_context(stack, context, 0, cross))
    v = self.to_v(webui_context(stack, context, 1, cross))
    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q.float(), k.float()) * self.scale
    sim = sim.softmax(dim=-1)
    out = torch.einsum("b i j, b j d -> b i d", sim, v)
    return self.to_out(rearrange(out, "(b h) n d -> b n (h d)", h=h))


class WebuiDiffusersProcessor:
    """diffusers AttnProcessor2_0 (for the UNet2DConditionModel transformer blocks: no group/spatial norm, no
    residual inside the attention) with the webui's hypernetwork step on the k/v context."""

    def __init__(self, stack):
        self.stack = stack

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        assert attention_mask is None and attn.group_norm is None and attn.spatial_norm is None
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        key = attn.to_k(webui_context(self.stack, context, 0, cross))
        value = attn.to_v(webui_context(self.stack, context, 1, cross))
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def webui_attention(unet: nn.Module, stack):
    """Within the block, `unet`'s attention applies `stack` the webui's way (no hypernet hooks may be present)."""
    assert hooked_hooks(unet) == 0
    if type(unet).__module__.startswith("ldm."):
        from ldm.modules.attention import CrossAttention

        patched = [m for m in unet.modules() if isinstance(m, CrossAttention)]
        assert patched
        for module in patched:
            module.forward = types.MethodType(functools.partial(_ldm_webui_forward, stack=stack), module)
        try:
            yield unet
        finally:
            for module in patched:
                del module.forward
    else:
        original = unet.attn_processors
        unet.set_attn_processor(WebuiDiffusersProcessor(stack))
        try:
            yield unet
        finally:
            unet.set_attn_processor(original)


def webui_output(unet, stack, seed: int = 0) -> torch.Tensor:
    with webui_attention(unet, stack):
        return run(unet, seed)


# ---------------------------------------------------------------- 1. hooked output == the webui formula

@pytest.mark.parametrize("kind", KINDS)
def test_hooked_output_matches_webui_formula(kind):
    unet = make_unet(kind)
    widths = WIDTHS[kind]
    # the webui's default layout ([1, 2, 1], relu, no layer norm), two of them stacked
    stack = [(make_hn(widths, seed=1, layer_structure=(1, 2, 1)), 0.8), (make_hn(widths, seed=2), 1.3)]
    base = run(unet)
    expected = webui_output(unet, stack)
    reversed_order = webui_output(unet, stack[::-1])

    with hypernet.attach(unet, stack) as handle:
        hooked = run(unet)
        assert handle.hooked_modules == 2 * len(hypernet.find_attention(unet))

    assert torch.allclose(hooked, expected, **TIGHT), (hooked - expected).abs().max()
    assert (hooked - base).abs().max() > MARGIN
    # stacking is sequential composition in the given order, so order matters
    assert not torch.allclose(hooked, reversed_order, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("options", [
    dict(layer_structure=(1, 1.5, 0.5, 1), activation="swish", layer_norm=True, activate_output=True,
         dropout_structure=(0, 0.1, 0.1, 0)),
    dict(layer_structure=(1, 1, 1), activation="linear", weight_init="XavierNormal"),
    dict(layer_structure=(1, 2, 1), activation="elu", layer_norm=True),
], ids=["swish-ln-dropout", "linear", "elu-ln"])
@pytest.mark.parametrize("kind", ["ldm", "sd1"])
def test_other_layouts_match_webui_formula(kind, options):
    unet = make_unet(kind)
    hn = make_hn(WIDTHS[kind], seed=6, **options)
    assert not hn.training  # eval: dropout off, as in the webui at inference
    base = run(unet)
    expected = webui_output(unet, [(hn, 1.0)])
    with hypernet.attach(unet, hn):
        hooked = run(unet)
    assert torch.allclose(hooked, expected, **TIGHT), (hooked - expected).abs().max()
    assert (hooked - base).abs().max() > MARGIN


@pytest.mark.parametrize("kind", KINDS)
def test_model_widths_are_found(kind):
    sites = hypernet.find_attention(make_unet(kind))
    assert sorted({s.width for s in sites if not s.cross}) == sorted(WIDTHS[kind][:-1])
    assert {s.width for s in sites if s.cross} == {WIDTHS[kind][-1]}
    assert {s.name.rsplit(".", 1)[-1] for s in sites if s.cross} == {"attn2"}


@pytest.mark.filterwarnings("ignore::hypernet.HypernetWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_missing_widths_pass_through(kind):
    unet = make_unet(kind)
    self_widths, cross = WIDTHS[kind][:-1], WIDTHS[kind][-1]
    # one hypernetwork with only the cross-attention width, one with only the largest self-attention width
    stack = [(make_hn([cross], seed=3), 1.0), (make_hn([self_widths[-1]], seed=4), 1.0)]
    base = run(unet)
    expected = webui_output(unet, stack)
    with hypernet.attach(unet, stack):
        hooked = run(unet)
    assert torch.allclose(hooked, expected, **TIGHT), (hooked - expected).abs().max()
    assert (hooked - base).abs().max() > MARGIN

    # cross-only: every self-attention width passes through untouched
    only_cross = [(make_hn([cross], seed=3), 1.0)]
    with hypernet.attach(unet, only_cross):
        hooked_cross = run(unet)
    assert torch.allclose(hooked_cross, webui_output(unet, only_cross), **TIGHT)
    assert not torch.allclose(hooked_cross, hooked, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_separate_self_and_cross_strengths(kind):
    unet = make_unet(kind)
    strength = {"self": 0.4, "cross": 1.7}
    stack = [(make_hn(WIDTHS[kind], seed=5), strength)]
    expected = webui_output(unet, stack)
    with hypernet.attach(unet, stack):
        hooked = run(unet)
    assert torch.allclose(hooked, expected, **TIGHT), (hooked - expected).abs().max()
    swapped = webui_output(unet, [(stack[0][0], {"self": 1.7, "cross": 0.4})])
    assert not torch.allclose(hooked, swapped, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- 2. strength 0, remove, with-form, re-attach

@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_base(kind):
    unet = make_unet(kind)
    base = run(unet)
    with hypernet.attach(unet, [(make_hn(WIDTHS[kind], seed=1), 0.0), (make_hn(WIDTHS[kind], seed=2), 0)]):
        out = run(unet)
    # x + linear(x) * 0 == x exactly, so each projection sees exactly its unhooked input
    assert torch.equal(out, base)


@pytest.mark.parametrize("kind", KINDS)
def test_remove_restores_bitwise(kind):
    unet = make_unet(kind)
    base = run(unet)
    handle = hypernet.attach(unet, make_hn(WIDTHS[kind], seed=1))
    assert handle.active and hooked_hooks(unet) == handle.hooked_modules > 0
    hooked = run(unet)
    assert (hooked - base).abs().max() > MARGIN
    handle.remove()
    assert not handle.active and hooked_hooks(unet) == 0
    assert torch.equal(run(unet), base)
    handle.remove()  # a second remove is harmless
    assert torch.equal(run(unet), base)


@pytest.mark.parametrize("kind", KINDS)
def test_with_form(kind):
    unet = make_unet(kind)
    hn = make_hn(WIDTHS[kind], seed=1)
    base = run(unet)
    expected = webui_output(unet, [(hn, 0.9)])
    with hypernet.attach(unet, [(hn, 0.9)]) as handle:
        assert isinstance(handle, hypernet.Attachment) and handle.active
        inside = run(unet)
    assert not handle.active
    assert torch.allclose(inside, expected, **TIGHT)
    assert torch.equal(run(unet), base)

    with pytest.raises(ZeroDivisionError):  # removed on an exception too
        with hypernet.attach(unet, [(hn, 0.9)]):
            _ = 1 / 0
    assert hooked_hooks(unet) == 0 and torch.equal(run(unet), base)


@pytest.mark.parametrize("kind", KINDS)
def test_attach_twice_replaces_never_stacks(kind):
    unet = make_unet(kind)
    hn_a, hn_b = make_hn(WIDTHS[kind], seed=1), make_hn(WIDTHS[kind], seed=2)
    base = run(unet)
    doubled = webui_output(unet, [(hn_a, 1.0), (hn_a, 1.0)])
    with hypernet.attach(unet, [(hn_a, 1.0)]):
        single_a = run(unet)
    with hypernet.attach(unet, [(hn_b, 1.0)]):
        single_b = run(unet)

    # the same stack twice: applied once, not twice
    first = hypernet.attach(unet, [(hn_a, 1.0)])
    second = hypernet.attach(unet, [(hn_a, 1.0)])
    assert not first.active and second.active
    assert hooked_hooks(unet) == second.hooked_modules
    assert torch.equal(run(unet), single_a)
    assert not torch.allclose(single_a, doubled, rtol=1e-3, atol=1e-3)

    # a different stack replaces the first
    third = hypernet.attach(unet, [(hn_b, 1.0)])
    assert torch.equal(run(unet), single_b)
    second.remove()  # removing a replaced attachment leaves the current one in place
    assert torch.equal(run(unet), single_b)

    # set_stack swaps hypernetworks without re-hooking
    third.set_stack([(hn_a, 1.0)])
    assert hooked_hooks(unet) == third.hooked_modules
    assert torch.equal(run(unet), single_a)

    assert hypernet.detach(unet) == 1
    assert not third.active and hooked_hooks(unet) == 0
    assert torch.equal(run(unet), base)
    assert hypernet.detach(unet) == 0


# ---------------------------------------------------------------- 3. gradients

def _trainable(hn):
    hn.train()
    hn.requires_grad_(True)
    return hn


def _grads(hn):
    return {name: p.grad.clone() if p.grad is not None else None for name, p in hn.named_parameters()}


def _loss(unet, inputs):
    return call_unet(unet, **inputs).float().pow(2).mean()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_hypernetwork_not_unet(kind):
    unet = make_unet(kind).requires_grad_(False)
    hn = _trainable(make_hn(WIDTHS[kind], seed=1))
    inputs = unet_inputs(unet)
    with hypernet.attach(unet, hn):
        loss = _loss(unet, inputs)
        assert loss.requires_grad
        loss.backward()
    grads = _grads(hn)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), \
        [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert all(p.grad is None for p in unet.parameters())

    # the same gradients as the webui formula gives
    ref_hn = _trainable(make_hn(WIDTHS[kind], seed=1))
    with webui_attention(unet, [(ref_hn, 1.0)]):
        _loss(unet, inputs).backward()
    for name, p in ref_hn.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_works(kind):
    unet = make_unet(kind).requires_grad_(False)
    hn = _trainable(make_hn(WIDTHS[kind], seed=1))
    inputs = unet_inputs(unet)
    with hypernet.attach(unet, hn):
        with_grad = call_unet(unet, **inputs)
        with torch.no_grad():
            without = call_unet(unet, **inputs)
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)
    assert all(p.grad is None for p in hn.parameters())


def _webui_checkpointing(unet, use_reentrant):
    """sd_hijack_checkpoint.py: BasicTransformerBlock.forward = checkpoint(self._forward, x, context), and the same
    for ResBlock. The webui passes no use_reentrant, which means the reentrant variant."""
    from ldm.modules.attention import BasicTransformerBlock
    from ldm.modules.diffusionmodules.openaimodel import ResBlock

    def block_forward(self, x, context=None):
        return checkpoint(self._forward, x, context, use_reentrant=use_reentrant)

    def res_forward(self, x, emb):
        return checkpoint(self._forward, x, emb, use_reentrant=use_reentrant)

    count = 0
    for module in unet.modules():
        if isinstance(module, BasicTransformerBlock):
            module.forward = types.MethodType(block_forward, module)
            count += 1
        elif isinstance(module, ResBlock):
            module.forward = types.MethodType(res_forward, module)
    assert count > 0
    return unet


def _ldm_grads(unet, latent_requires_grad=False):
    hn = _trainable(make_hn(WIDTHS["ldm"], seed=1))
    inputs = unet_inputs(unet)
    inputs["x"].requires_grad_(latent_requires_grad)
    with hypernet.attach(unet, hn):
        loss = _loss(unet, inputs)
        if loss.requires_grad:
            loss.backward()
    return loss, _grads(hn)


def test_ldm_checkpointing_non_reentrant_keeps_gradients():
    _, plain = _ldm_grads(make_unet("ldm").requires_grad_(False))
    unet = _webui_checkpointing(make_unet("ldm").requires_grad_(False), use_reentrant=False)
    loss, grads = _ldm_grads(unet)
    assert loss.requires_grad
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name
        assert torch.allclose(g, plain[name], rtol=1e-4, atol=1e-7), name
    assert all(p.grad is None for p in unet.parameters())


def test_ldm_reentrant_checkpointing_with_frozen_unet_needs_a_latent_that_requires_grad():
    # Reentrant checkpointing (the webui's, since it passes no use_reentrant) runs the block under no_grad and only
    # records a graph node if one of the block's *tensor inputs* requires grad; parameters used inside (ours,
    # reached through the hooks) do not count. With the UNet frozen and a plain latent nothing entering any block
    # requires grad, so the output has no graph at all and the hypernetwork would get no gradient (backward would
    # raise). The webui escapes this only because it never freezes the UNet. Making the input latent require grad
    # gives every block a grad-requiring input, and then the recomputation in backward reaches the hypernetwork.
    _, plain = _ldm_grads(make_unet("ldm").requires_grad_(False))
    unet = _webui_checkpointing(make_unet("ldm").requires_grad_(False), use_reentrant=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires_grad.*", category=UserWarning)
        loss, grads = _ldm_grads(unet, latent_requires_grad=False)
    assert not loss.requires_grad
    assert all(g is None for g in grads.values())
    with pytest.raises(RuntimeError):
        loss.backward()

    loss, grads = _ldm_grads(unet, latent_requires_grad=True)
    assert loss.requires_grad
    for name, g in grads.items():
        assert g is not None and torch.allclose(g, plain[name], rtol=1e-4, atol=1e-7), name
    assert all(p.grad is None for p in unet.parameters())


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_diffusers_gradient_checkpointing_keeps_gradients(kind):
    inputs = unet_inputs(make_unet(kind))
    results = []
    for checkpointing in (False, True):
        unet = make_unet(kind).requires_grad_(False)
        if checkpointing:
            unet.enable_gradient_checkpointing()  # diffusers uses use_reentrant=False
        hn = _trainable(make_hn(WIDTHS[kind], seed=1))
        with hypernet.attach(unet, hn):
            _loss(unet, inputs).backward()
        results.append(_grads(hn))
    plain, ckpt = results
    for name, g in ckpt.items():
        assert g is not None and g.abs().sum() > 0 and torch.allclose(g, plain[name], rtol=1e-4, atol=1e-7), name


# ---------------------------------------------------------------- 4. half / bfloat16 UNet, float32 hypernetwork

@pytest.fixture
def ldm_low_precision_attention(monkeypatch):
    # ldm's CrossAttention upcasts q and k to float32 and then multiplies the float32 attention by a half v, which
    # raises for a half UNet; the webui replaces this forward. ATTN_PRECISION=fp16 is ldm's own switch for it.
    import ldm.modules.attention

    monkeypatch.setattr(ldm.modules.attention, "_ATTN_PRECISION", "fp16")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_unet_float32_hypernetwork(kind, dtype, ldm_low_precision_attention):
    unet = make_unet(kind)
    hn = make_hn(WIDTHS[kind], seed=1)
    base32 = run(unet)
    with hypernet.attach(unet, hn):
        hooked32 = run(unet)
    set_dtype(unet, dtype)
    base = run(unet)
    assert base.dtype == dtype
    with hypernet.attach(unet, hn):
        hooked = run(unet)
    assert hooked.dtype == dtype and torch.isfinite(hooked).all()
    assert all(p.dtype == torch.float32 for p in hn.parameters())
    assert (hooked.float() - base.float()).abs().max() > MARGIN
    # the low-precision result follows the float32 one (the rounding of a tiny UNet stays well under the effect)
    err = (hooked.float() - hooked32).abs().max()
    assert err < 0.25 * (hooked32 - base32).abs().max(), err


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_change_after_attach(kind, ldm_low_precision_attention):
    unet = make_unet(kind)
    handle = hypernet.attach(unet, make_hn(WIDTHS[kind], seed=1))
    hooked32 = run(unet)
    set_dtype(unet, torch.bfloat16)
    hooked = run(unet)
    assert handle.active and hooked.dtype == torch.bfloat16
    handle.remove()
    base = run(unet)
    assert (hooked.float() - base.float()).abs().max() > MARGIN
    assert (hooked.float() - hooked32).abs().max() < (hooked.float() - base.float()).abs().max()


# ---------------------------------------------------------------- 5. compatibility: an SD1 file on SDXL

def test_sd1_hypernetwork_on_sdxl_only_reaches_self_attention():
    unet = make_unet("sdxl")
    sd1_like = make_hn([768, 32, 64], seed=1)
    report = sd1_like.compatibility(unet)
    assert report.model_cross_dims == [2048] and report.model_self_dims == [64]
    assert report.cross_dims_used == []
    assert report.self_dims_used == [64]
    assert report.unused_dims == [32, 768]
    assert report.applies and not report.fits
    assert "only reaches self-attention" in report.warning and "SDXL" in report.warning
    assert report.to_dict()["fits"] is False

    base = run(unet)
    with pytest.warns(HypernetWarning, match="only reaches self-attention"):
        handle = hypernet.attach(unet, sd1_like)
    hooked = run(unet)
    handle.remove()
    assert torch.allclose(hooked, webui_output(unet, [(sd1_like, 1.0)]), **TIGHT)
    assert (hooked - base).abs().max() > MARGIN
    assert handle.warnings and "only reaches self-attention" in handle.warnings[0]


@pytest.mark.parametrize("kind", KINDS)
def test_matching_hypernetwork_fits_without_warning(kind):
    unet = make_unet(kind)
    hn = make_hn(WIDTHS[kind], seed=1)
    report = hypernet.compatibility(hn, unet)
    assert report.fits and report.applies and report.warning is None
    assert report.cross_dims_used == [WIDTHS[kind][-1]]
    assert report.self_dims_used == sorted(WIDTHS[kind][:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", HypernetWarning)
        hypernet.attach(unet, hn).remove()


def test_unrelated_hypernetwork_applies_nothing_and_says_so():
    unet = make_unet("sd1")
    hn = make_hn([96], seed=1)
    report = hn.compatibility(unet)
    assert not report.applies and not report.fits and report.unused_dims == [96]
    base = run(unet)
    with pytest.warns(HypernetWarning, match="applies nothing"):
        with hypernet.attach(unet, hn):
            assert torch.equal(run(unet), base)


# ---------------------------------------------------------------- 6. projections that are not nn.Linear (Forge)

class ForgeLinear(nn.Module):
    """Like Forge's ForgeOperations.Linear: not an nn.Linear; casts its weight to the input dtype at call time."""

    def __init__(self, linear: nn.Linear, *, with_in_features: bool = True):
        super().__init__()
        if with_in_features:
            self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def _forgeify(unet, **kwargs):
    count = 0
    for module in list(unet.modules()):
        for name in ("to_q", "to_k", "to_v"):
            layer = getattr(module, name, None)
            if isinstance(layer, nn.Linear):
                setattr(module, name, ForgeLinear(layer, **kwargs))
                count += 1
    assert count > 0
    return unet


@pytest.mark.parametrize("with_in_features", [True, False], ids=["in_features", "weight_only"])
@pytest.mark.parametrize("kind", ["ldm", "sdxl"])
def test_non_linear_projection_is_found_and_hooked(kind, with_in_features):
    unet = make_unet(kind)
    hn = make_hn(WIDTHS[kind], seed=1)
    with hypernet.attach(unet, hn):
        expected = run(unet)
    forge = _forgeify(make_unet(kind), with_in_features=with_in_features)
    assert not any(isinstance(getattr(m, "to_k", None), nn.Linear) for m in forge.modules())
    sites = hypernet.find_attention(forge)
    assert [(s.name, s.width, s.cross) for s in sites] == \
        [(s.name, s.width, s.cross) for s in hypernet.find_attention(unet)]
    base = run(forge)
    with hypernet.attach(forge, hn) as handle:
        hooked = run(forge)
        assert handle.hooked_modules == 2 * len(sites)
    assert torch.allclose(hooked, expected, **TIGHT)
    assert (hooked - base).abs().max() > MARGIN
