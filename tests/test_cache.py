"""The shared cross-attention result (attach.ChainCache): every layer reading the same context gets the result the
per-layer math gives, bit for bit, and nothing it depends on can change without the result being recomputed."""
from __future__ import annotations

import functools
import gc

import pytest
import torch

import hypernet
from hypernet.attach import CACHE_ENTRIES

from models import call_unet, unet_inputs
from test_attach import WIDTHS, _webui_checkpointing, make_hn, make_unet

KINDS = ["ldm", "sd1", "sdxl"]


def _outputs(unet, stack, inputs, *, cache: bool, grad: bool = False):
    """(output, attachment) of one forward with the stack attached, cached or not."""
    handle = hypernet.attach(unet, stack, warn=False, cache=cache)
    with torch.set_grad_enabled(grad):
        out = call_unet(unet, **inputs)
    return out, handle


def _per_layer(unet, stack, inputs, grad: bool = False):
    out, handle = _outputs(unet, stack, inputs, cache=False, grad=grad)
    handle.remove()
    return out


def _cross_sites(unet) -> int:
    return sum(s.cross for s in hypernet.find_attention(unet))


# ---------------------------------------------------------------- equal outputs, computed once

@pytest.mark.parametrize("kind", KINDS)
def test_cached_output_equals_per_layer_math_and_computes_once(kind):
    unet = make_unet(kind)
    stack = [(make_hn(WIDTHS[kind], seed=1, layer_structure=(1, 2, 1)), 0.8), (make_hn(WIDTHS[kind], seed=2), 1.3)]
    inputs = unet_inputs(unet)
    expected = _per_layer(unet, stack, inputs)
    out, handle = _outputs(unet, stack, inputs, cache=True)
    assert torch.equal(out, expected)
    assert handle.cache.misses == 2  # k and v, once each for the whole forward
    assert handle.cache.hits == 2 * (_cross_sites(unet) - 1) > 0
    # the host passes the same tensor at the next sampling step: nothing is recomputed
    with torch.no_grad():
        again = call_unet(unet, **inputs)
    assert torch.equal(again, expected) and handle.cache.misses == 2
    handle.remove()
    assert len(handle.cache) == 0


def test_uncached_attachment_has_no_cache_and_same_output():
    unet = make_unet("sd1")
    hn = make_hn(WIDTHS["sd1"], seed=1)
    inputs = unet_inputs(unet)
    out, handle = _outputs(unet, [(hn, 1.0)], inputs, cache=False)
    assert handle.cache is None
    handle.remove()
    cached, handle = _outputs(unet, [(hn, 1.0)], inputs, cache=True)
    assert torch.equal(out, cached)
    handle.remove()


# ---------------------------------------------------------------- what empties it

@pytest.fixture
def sd1():
    unet = make_unet("sd1")
    hn = make_hn(WIDTHS["sd1"], seed=1)
    inputs = unet_inputs(unet)
    handle = hypernet.attach(unet, [(hn, 1.0)], warn=False)
    yield unet, hn, inputs, handle
    handle.remove()


def _run(unet, inputs, grad=False):
    with torch.set_grad_enabled(grad):
        return call_unet(unet, **inputs)


def test_a_new_context_tensor_is_computed_afresh(sd1):
    unet, hn, inputs, handle = sd1
    first = _run(unet, inputs)
    other = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"] + 1)
    out = _run(unet, other)
    assert torch.equal(out, _per_layer(unet, handle.stack, other))
    assert not torch.equal(out, first)


def test_a_context_changed_in_place_is_computed_afresh(sd1):
    unet, hn, inputs, handle = sd1
    first = _run(unet, inputs)
    inputs["encoder_hidden_states"].mul_(0.5)  # same tensor object, new values
    out = _run(unet, inputs)
    assert not torch.equal(out, first)
    handle.remove()
    assert torch.equal(out, _per_layer(unet, [(hn, 1.0)], inputs))


def test_strength_and_stack_changes_are_computed_afresh(sd1):
    unet, hn, inputs, handle = sd1
    _run(unet, inputs)
    other = make_hn(WIDTHS["sd1"], seed=2)
    for stack in ([(hn, 0.3)], [(hn, {"self": 1.0, "cross": 0.2})], [(other, 1.0)], [(hn, 1.0), (other, 0.5)]):
        handle.set_stack(stack)
        out = _run(unet, inputs)
        assert torch.equal(out, _per_layer(unet, stack, inputs)), stack
        handle = hypernet.attach(unet, stack, warn=False)  # _per_layer replaced it; the fixture removes this one
    handle.stack = [(hn, 0.7)]
    assert torch.equal(_run(unet, inputs), _per_layer(unet, [(hn, 0.7)], inputs))


@pytest.fixture(autouse=True)
def _own_rng():
    """Tests here seed the global generator; later tests see it as it was."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "assign", "train_mode_dropout"])
def test_weight_changes_are_computed_afresh(change):
    unet = make_unet("sd1")
    hn = make_hn(WIDTHS["sd1"], seed=1, dropout_structure=(0, 0.5, 0) if change == "train_mode_dropout" else None)
    inputs = unet_inputs(unet)
    handle = hypernet.attach(unet, [(hn, 1.0)], warn=False)
    first = _run(unet, inputs)
    k_module = hn.modules_for(768)[0]
    new = {k: v * 1.5 for k, v in k_module.state_dict().items()}
    with torch.no_grad():
        if change == "in_place":  # what an optimizer step does
            k_module.linear[0].weight.mul_(1.5)
        elif change == "load_state_dict":
            k_module.load_state_dict(new)
        elif change == "assign":
            k_module.load_state_dict(new, assign=True)
        else:
            hn.train()
    torch.manual_seed(0)
    out = _run(unet, inputs)
    assert not torch.equal(out, first)
    handle.remove()
    torch.manual_seed(0)
    assert torch.equal(out, _per_layer(unet, [(hn, 1.0)], inputs))


def test_grad_no_grad_inference_and_autocast_modes_never_share_a_result(sd1):
    unet, hn, inputs, handle = sd1
    hn.requires_grad_(True)
    plain = _run(unet, inputs)
    with_grad = _run(unet, inputs, grad=True)
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), plain)
    with torch.inference_mode():
        inferred = call_unet(unet, **inputs)
    assert torch.equal(inferred, plain)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = call_unet(unet, **inputs)
    handle.remove()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_expected = _per_layer(unet, [(hn, 1.0)], inputs)
    assert torch.equal(low, low_expected) and not torch.equal(low.float(), plain)


def test_inference_tensors_are_shared_within_one_forward_only(sd1):
    unet, hn, inputs, handle = sd1
    with torch.inference_mode():
        ctx = inputs["encoder_hidden_states"].clone()  # an inference tensor: no version counter
        run_inputs = dict(inputs, encoder_hidden_states=ctx)
        first = call_unet(unet, **run_inputs)
        assert handle.cache.misses == 2 and handle.cache.hits > 0
        ctx.mul_(0.5)  # an in-place change the cache could not see on an inference tensor
        second = call_unet(unet, **run_inputs)
    assert handle.cache.misses == 4  # so the next forward recomputes
    handle.remove()
    with torch.inference_mode():
        assert torch.equal(second, _per_layer(unet, [(hn, 1.0)], run_inputs))
    assert not torch.equal(first, second)


def test_memory_stays_bounded_and_entries_die_with_their_context(sd1):
    unet, hn, inputs, handle = sd1
    for _ in range(CACHE_ENTRIES + 3):
        _run(unet, dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"])))
        assert len(handle.cache) <= CACHE_ENTRIES
    gc.collect()
    assert len(handle.cache) == 0  # those contexts are gone, and their results with them
    _run(unet, inputs)
    assert len(handle.cache) == 2
    handle.remove()
    assert len(handle.cache) == 0


def _spoiling_output(unet, hn, inputs, cache: bool):
    """The output when the first cross-attention to_k writes into what it reads (after our hook ran)."""
    handle = hypernet.attach(unet, [(hn, 1.0)], warn=False, cache=cache)
    proj = next(s.module.to_k for s in hypernet.find_attention(unet) if s.cross)
    spoil = proj.register_forward_pre_hook(lambda m, args: (args[0].mul_(2), None)[1])
    out = _run(unet, inputs)
    spoil.remove()
    handle.remove()
    return out


def test_a_consumer_writing_into_the_result_invalidates_it():
    unet = make_unet("sd1")
    hn = make_hn(WIDTHS["sd1"], seed=1)
    inputs = unet_inputs(unet)
    assert torch.equal(_spoiling_output(unet, hn, inputs, True), _spoiling_output(unet, hn, inputs, False))


# ---------------------------------------------------------------- training

def _trainable(hn):
    return hn.train().requires_grad_(True)


def _grads(unet, stack, inputs, *, cache: bool, forwards: int = 1):
    hn = stack[0][0]
    hn.zero_grad(set_to_none=True)
    handle = hypernet.attach(unet, stack, warn=False, cache=cache)
    outs = []
    for _ in range(forwards):  # gradient accumulation with the very same context tensor
        out = call_unet(unet, **inputs)
        out.float().pow(2).mean().backward()
        outs.append(out.detach())
    misses = handle.cache.misses if cache else None
    handle.remove()
    return outs, {n: p.grad.clone() for n, p in hn.named_parameters()}, misses


@pytest.mark.parametrize("kind", KINDS)
def test_training_gradients_equal_the_per_layer_gradients(kind):
    unet = make_unet(kind).requires_grad_(False)
    hn = _trainable(make_hn(WIDTHS[kind], seed=1))
    inputs = unet_inputs(unet)
    plain_out, plain, _ = _grads(unet, [(hn, 1.0)], inputs, cache=False, forwards=2)
    out, grads, misses = _grads(unet, [(hn, 1.0)], inputs, cache=True, forwards=2)
    assert misses == 4  # k and v once per forward: a graph is never reused by the next forward
    assert all(torch.equal(a, b) for a, b in zip(out, plain_out))
    for name, g in grads.items():
        assert g.abs().sum() > 0 and torch.allclose(g, plain[name], rtol=1e-5, atol=1e-8), name


def test_dropout_in_training_keeps_one_draw_per_layer():
    unet = make_unet("sd1").requires_grad_(False)
    hn = _trainable(make_hn(WIDTHS["sd1"], seed=1, dropout_structure=(0, 0.3, 0)))
    inputs = unet_inputs(unet)
    torch.manual_seed(5)
    plain_out, plain, _ = _grads(unet, [(hn, 1.0)], inputs, cache=False)
    torch.manual_seed(5)
    out, grads, misses = _grads(unet, [(hn, 1.0)], inputs, cache=True)
    assert misses == 0  # nothing shared
    assert torch.equal(out[0], plain_out[0])
    assert all(torch.equal(g, plain[n]) for n, g in grads.items())
    # and the layers really got different draws: what two cross-attention to_k layers read differs
    seen = []
    handle = hypernet.attach(unet, [(hn, 1.0)], warn=False)
    cross = [s for s in hypernet.find_attention(unet) if s.cross][:2]
    probes = [s.module.to_k.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
              for s in cross]  # registered after ours: they see its result
    call_unet(unet, **inputs)
    for probe in probes:
        probe.remove()
    handle.remove()
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])


@pytest.mark.parametrize("reentrant", [False, True])
def test_ldm_checkpointing_with_the_cache_gives_the_per_layer_gradients(reentrant):
    unet = _webui_checkpointing(make_unet("ldm").requires_grad_(False), use_reentrant=reentrant)
    hn = _trainable(make_hn(WIDTHS["ldm"], seed=1))
    inputs = unet_inputs(unet)
    inputs["x"].requires_grad_(True)  # reentrant checkpoints need an input that requires grad
    _, plain, _ = _grads(unet, [(hn, 1.0)], inputs, cache=False)
    _, grads, _ = _grads(unet, [(hn, 1.0)], inputs, cache=True)
    for name, g in grads.items():
        assert g.abs().sum() > 0 and torch.allclose(g, plain[name], rtol=1e-5, atol=1e-8), name


def test_diffusers_checkpointing_with_the_cache_gives_the_per_layer_gradients():
    unet = make_unet("sd1").requires_grad_(False)
    unet.enable_gradient_checkpointing()
    hn = _trainable(make_hn(WIDTHS["sd1"], seed=1))
    inputs = unet_inputs(unet)
    _, plain, _ = _grads(unet, [(hn, 1.0)], inputs, cache=False)
    _, grads, misses = _grads(unet, [(hn, 1.0)], inputs, cache=True)
    assert misses == 2
    for name, g in grads.items():
        assert g.abs().sum() > 0 and torch.allclose(g, plain[name], rtol=1e-5, atol=1e-8), name


def test_the_trainer_learns_the_same_with_and_without_the_cache(tmp_path, monkeypatch):
    # SGD: Adam's first steps divide by the gradient's own size, which turns rounding-level differences in
    # near-zero gradients into lr-sized ones; SGD keeps them at rounding level, so the comparison can be tight.
    from hypernet.tiny import model as tiny
    from hypernet.train import trainer as train_module
    from hypernet.config import CreateOptions
    from hypernet.hosts.diffusers import DiffusersHost
    from test_train import make_images, opts, state

    data = make_images(tmp_path / "data")
    host = DiffusersHost(tiny.pipeline("sd1", seed=1))
    create = CreateOptions(name="c", dims=host.model_dims())
    kw = dict(steps=3, gradient_accumulation=2, optimizer="SGD", learning_rate="1e-1")
    cached = train_module.train(host, opts(data, tmp_path / "a", **kw), create=create, show_progress=False)
    monkeypatch.setattr(train_module, "attach", functools.partial(hypernet.attach, cache=False))
    plain = train_module.train(host, opts(data, tmp_path / "b", **kw), create=create, show_progress=False)
    a, b = state(hypernet.load(cached.output)), state(hypernet.load(plain.output))
    start = state(hypernet.create(dims=host.model_dims(), name="c", seed=123))
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # it did learn
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-8) for k in a)
