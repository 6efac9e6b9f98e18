"""Schedules and the pure pieces of the training objective."""
import math

import pytest
import torch

from hypernet import ConfigError
from hypernet.config import TrainOptions
from hypernet.train.schedule import cosine_factor, learning_rate, parse_schedule, value_at, warmup_factor
from hypernet.train import objective as T


def test_webui_schedule_semantics():
    s = parse_schedule("0.005:100, 1e-3:1000, 1e-5", 10000)
    assert s == [(0.005, 100), (1e-3, 1000), (1e-5, 10000)]
    assert value_at(s, 0) == 0.005 and value_at(s, 99) == 0.005
    assert value_at(s, 100) == 1e-3 and value_at(s, 999) == 1e-3
    assert value_at(s, 1000) == 1e-5 and value_at(s, 50000) == 1e-5


def test_bare_rate_and_minus_one_run_to_the_end():
    assert parse_schedule("1e-4", 500) == [(1e-4, 500)]
    assert parse_schedule("1e-4:-1", 500) == [(1e-4, 500)]
    assert parse_schedule(0.001, 10) == [(0.001, 10)]
    assert parse_schedule("1e-4:50, 1e-5:600, 1e-6", 500) == [(1e-4, 50), (1e-5, 600)]  # past the end: cut


@pytest.mark.parametrize("text,words", [
    ("", "empty"), ("abc", "not a number"), ("1e-4:x", "not a whole number"), ("1e-4:100, 1e-5:50", "increase"),
    ("1e-4:100,, 1e-5", "empty entry"), ("-1e-4", ">= 0"), ("inf", "finite"),
])
def test_bad_schedules_are_clear(text, words):
    with pytest.raises(ConfigError) as info:
        parse_schedule(text, 100, field="learning_rate")
    assert info.value.field == "learning_rate" and words in str(info.value)


def test_train_options_validate_schedules_and_fields():
    with pytest.raises(ConfigError, match="clip_grad_value"):
        TrainOptions(clip_grad_mode="norm", clip_grad_value="big")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainOptions(batch_size=0)
    with pytest.raises(ConfigError, match="width: must be a multiple of 8"):
        TrainOptions(width=500)
    with pytest.raises(ConfigError, match="optimizer: unknown value 'Lion8bit'"):
        TrainOptions(optimizer="Lion8bit")
    with pytest.raises(ConfigError, match="caption_dropout"):
        TrainOptions(caption_dropout=1.0)
    with pytest.raises(ConfigError, match="lr_cycles"):
        TrainOptions(lr_cycles=0)
    with pytest.raises(ConfigError, match="lr_power"):
        TrainOptions(lr_power=0)
    with pytest.raises(ConfigError, match="clip_skip"):
        TrainOptions(clip_skip=-1)
    with pytest.raises(ConfigError, match="save_precision"):
        TrainOptions(save_precision="int8")
    with pytest.raises(ConfigError, match="timestep"):
        TrainOptions(timestep_min=500, timestep_max=400)
    assert TrainOptions(learning_rate=5e-4, steps="20", flip="true").learning_rate == "0.0005"


@pytest.mark.parametrize("warmup", [0, 10])
def test_new_shapes_follow_diffusers_schedulers(warmup):
    """cosine_with_restarts and polynomial are diffusers' formulas, as pure functions of the step."""
    from diffusers.optimization import (get_cosine_with_hard_restarts_schedule_with_warmup,
                                        get_polynomial_decay_schedule_with_warmup)
    total, rate = 100, 1e-3
    param = torch.nn.Parameter(torch.zeros(1))
    theirs = {
        ("cosine_with_restarts", 3, 1.0): get_cosine_with_hard_restarts_schedule_with_warmup(
            torch.optim.SGD([param], lr=rate), warmup, total, num_cycles=3),
        ("polynomial", 1, 2.0): get_polynomial_decay_schedule_with_warmup(
            torch.optim.SGD([param], lr=rate), warmup, total, lr_end=0.0, power=2.0),
    }
    s = parse_schedule(str(rate), total)
    for (shape, cycles, power), scheduler in theirs.items():
        for step in range(warmup, total + 5):   # during warmup our ramp is (step+1)/warmup, theirs step/warmup
            expected = rate * scheduler.lr_lambdas[0](step)
            assert learning_rate(s, step, total, warmup, shape, cycles, power) == pytest.approx(expected, abs=1e-12)
    assert learning_rate(s, 0, total, 4, "constant_with_warmup") == pytest.approx(rate / 4)
    assert learning_rate(s, 50, total, 4, "constant_with_warmup") == pytest.approx(rate)


def test_warmup_and_cosine():
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert cosine_factor(0, 100) == 1.0 and abs(cosine_factor(50, 100) - 0.5) < 1e-12 and cosine_factor(100, 100) == 0
    s = parse_schedule("1e-3", 100)
    assert learning_rate(s, 0, 100, 10, "constant") == pytest.approx(1e-4)
    assert learning_rate(s, 50, 100, 10, "cosine") == pytest.approx(5e-4)


def test_noising_and_targets():
    # seeded: with whatever values earlier tests leave the global generator at, float32 cancellation in v can
    # exceed allclose's default atol
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    a = torch.tensor([0.9, 0.5, 0.1])
    xt = T.noisy_latents(x0, noise, a)
    assert torch.allclose(xt[1], math.sqrt(0.5) * x0[1] + math.sqrt(0.5) * noise[1])
    assert torch.equal(T.target("epsilon", x0, noise, a), noise)
    v = T.target("v", x0, noise, a)
    assert torch.allclose(v[0], math.sqrt(0.9) * noise[0] - math.sqrt(0.1) * x0[0])


def test_min_snr_weights():
    a = torch.tensor([0.99, 0.5, 0.01])
    snr = a / (1 - a)
    w = T.min_snr_weight(a, 5.0, "epsilon")
    assert torch.allclose(w, torch.clamp(snr, max=5) / snr)
    assert w[0] < 1 and w[1] == 1 and w[2] == 1
    assert torch.allclose(T.min_snr_weight(a, 5.0, "v"), torch.clamp(snr, max=5) / (snr + 1))
    assert torch.equal(T.min_snr_weight(a, 0.0, "epsilon"), torch.ones(3))


def test_weighted_loss_ignores_zero_weight_pixels():
    pred, tgt = torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    tgt[..., 0] = 10.0  # error only in the left column
    w = torch.ones(1, 1, 2, 2)
    w[..., 0] = 0.0
    assert T.per_sample_loss(pred, tgt, w).item() == 0.0
    assert T.per_sample_loss(pred, tgt, None).item() == pytest.approx(50.0)


def test_noise_offset_and_timesteps_are_reproducible():
    g1, g2 = T.step_generator(7, 3, 0), T.step_generator(7, 3, 0)
    assert torch.equal(T.sample_noise((2, 4, 3, 3), 0.1, g1), T.sample_noise((2, 4, 3, 3), 0.1, g2))
    t = T.sample_timesteps(1000, 200, 300, T.step_generator(1, 1, 1))
    assert t.min() >= 200 and t.max() < 300
    n = T.sample_noise((2000, 4, 1, 1), 0.0, T.step_generator(0, 0, 0))
    m = T.sample_noise((2000, 4, 1, 1), 1.0, T.step_generator(0, 0, 0))
    assert m.std() > n.std() * 1.3  # the per-channel offset adds variance
