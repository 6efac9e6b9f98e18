"""Creation options and the module layout / math, against the webui's rules."""
import pytest
import torch
from torch import nn

import hypernet
from hypernet import ConfigError, CreateOptions
from hypernet.config import parse_dropout_structure


def _types(module):
    return [type(m).__name__ for m in module.linear]


def test_defaults_match_webui_create_tab():
    c = CreateOptions()
    assert c.dims == [320, 640, 768, 1280]
    assert c.layer_structure == [1.0, 2.0, 1.0]
    assert c.weight_init == "Normal" and c.layer_norm is False and c.activate_output is False
    assert c.dropout_structure == [0.0, 0.0, 0.0]


def test_module_order_relu_dropout():
    hn = hypernet.create(dims=[16], layer_structure=[1, 2, 1], activation="relu", dropout_structure=[0, 0.3, 0])
    k, _ = hn.modules_for(16)
    assert _types(k) == ["Linear", "ReLU", "Dropout", "Linear"]
    assert set(k.state_dict()) == {"linear.0.weight", "linear.0.bias", "linear.3.weight", "linear.3.bias"}


def test_module_order_layer_norm_after_output_and_activate_output():
    hn = hypernet.create(dims=[16], layer_structure="1, 2, 2, 1", activation="tanh", layer_norm=True,
                         activate_output=True, dropout_structure="0, 0.1, 0.2, 0")
    k, _ = hn.modules_for(16)
    assert _types(k) == ["Linear", "Tanh", "LayerNorm", "Dropout", "Linear", "Tanh", "LayerNorm", "Dropout",
                         "Linear", "Tanh", "LayerNorm"]


def test_linear_activation_has_no_activation_modules():
    hn = hypernet.create(dims=[8], activation="linear")
    assert _types(hn.modules_for(8)[0]) == ["Linear", "Linear"]


def test_swish_is_hardswish_and_torch_names_accepted():
    hn = hypernet.create(dims=[8], activation="swish")
    assert isinstance(hn.modules_for(8)[0].linear[1], nn.Hardswish)
    for name in ("gelu", "silu", "mish", "softsign", "prelu", "hardswish", "elu", "leakyrelu"):
        assert name in hypernet.ACTIVATIONS
    assert "threshold" not in hypernet.ACTIVATIONS  # needs constructor arguments
    assert "multiheadattention" not in hypernet.ACTIVATIONS


def test_fractional_structure_truncates_widths():
    hn = hypernet.create(dims=[33], layer_structure=[1, 1.5, 1])
    first = hn.modules_for(33)[0].linear[0]
    assert first.out_features == int(33 * 1.5) == 49


@pytest.mark.parametrize("init", ["Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal"])
def test_inits_zero_bias_and_layernorm_gamma_is_normal(init):
    hn = hypernet.create(dims=[64], weight_init=init, layer_norm=True, seed=0)
    k, _ = hn.modules_for(64)
    for layer in k.linear:
        if isinstance(layer, (nn.Linear, nn.LayerNorm)):
            assert torch.count_nonzero(layer.bias) == 0
    ln = [m for m in k.linear if isinstance(m, nn.LayerNorm)][0]
    assert ln.weight.abs().max() < 0.1  # the webui's quirk: gamma ~ N(0, 0.01), not ones
    lin = k.linear[0]
    if init == "Normal":
        assert 0.005 < lin.weight.std() < 0.015
    else:
        assert lin.weight.std() > 0.05


def test_seed_makes_weights_reproducible():
    a = hypernet.create(dims=[8], seed=3)
    b = hypernet.create(dims=[8], seed=3)
    c = hypernet.create(dims=[8], seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_forward_is_residual_scaled_by_strength():
    hn = hypernet.create(dims=[8], seed=0)
    k, _ = hn.modules_for(8)
    x = torch.randn(2, 3, 8)
    mlp = k.linear(x)
    assert torch.allclose(k(x, 0.6), x + mlp * 0.6)
    assert torch.equal(k(x, 0.0), x)


def test_transform_stacks_in_order_and_passes_missing_widths():
    a = hypernet.create(dims=[8, 16], seed=1)
    b = hypernet.create(dims=[8], seed=2)
    x = torch.randn(1, 4, 8)
    k, v = hypernet.transform([(a, 1.0), (b, 0.5)], x)
    assert torch.allclose(k, b.modules_for(8)[0](a.modules_for(8)[0](x, 1.0), 0.5))
    assert torch.allclose(v, b.modules_for(8)[1](a.modules_for(8)[1](x, 1.0), 0.5))
    y = torch.randn(1, 4, 12)
    assert torch.equal(hypernet.transform([(a, 1.0)], y)[0], y)


def test_parameter_count_of_default_network():
    hn = hypernet.create()
    # webui: ~21.9M fp32 parameters for [1,2,1] on 768/320/640/1280
    assert hn.parameter_count() == sum(2 * (2 * (d * 2 * d) + 2 * d + d) for d in (768, 320, 640, 1280))
    assert 21.8e6 < hn.parameter_count() < 22.0e6


def test_modules_start_frozen_in_eval():
    hn = hypernet.create(dims=[8], dropout_structure=[0, 0.5, 0])
    assert not hn.training and not any(p.requires_grad for p in hn.parameters())
    x = torch.randn(4, 8)
    assert torch.equal(hn.modules_for(8)[0](x), hn.modules_for(8)[0](x))  # dropout off in eval


@pytest.mark.parametrize("kwargs,field,words", [
    (dict(layer_structure="1, 2"), "layer_structure", "end with 1"),
    (dict(layer_structure="2, 1"), "layer_structure", "start and end with 1"),
    (dict(layer_structure="1"), "layer_structure", "at least two"),
    (dict(layer_structure="1, 0, 1"), "layer_structure", "> 0"),
    (dict(layer_structure="1, x, 1"), "layer_structure", "not a number"),
    (dict(dropout_structure="0, 1, 0"), "dropout_structure", "[0, 1)"),
    (dict(dropout_structure="0, -0.1, 0"), "dropout_structure", "[0, 1)"),
    (dict(dropout_structure="0, 0.1"), "dropout_structure", "needs 3 entries"),
    (dict(activation="swishy"), "activation", "relu"),
    (dict(weight_init="He"), "weight_init", "KaimingUniform"),
    (dict(dims=[768, -1]), "dims", "positive"),
    (dict(dims=[100000000]), "dims", "up to 16384"),
    (dict(dims=[8192, 4096], layer_structure=[1, 8, 8, 1]), "layer_structure", "parameters"),
    (dict(dims="768, 76.5"), "dims", "not a number"),
    (dict(dims=[]), "dims", "at least one"),
    (dict(dims=[768, 768]), "dims", "once"),
    (dict(name=""), "name", "non-empty"),
    (dict(name="a:b"), "name", "character"),
    (dict(name="None"), "name", "reserved"),
    (dict(layer_norm="maybe"), "layer_norm", "true or false"),
])
def test_invalid_options_name_the_field(kwargs, field, words):
    with pytest.raises(ConfigError) as info:
        CreateOptions(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert words in str(info.value)
    assert isinstance(info.value, hypernet.HypernetError) and isinstance(info.value, ValueError)


def test_strings_are_parsed_like_the_create_tab():
    c = CreateOptions(dims="768,320, 1024", layer_structure="1, 1.5, 1", dropout_structure="0, 0.2, 0",
                      activation="ReLU", layer_norm="true")
    assert c.dims == [320, 768, 1024] and c.layer_structure == [1.0, 1.5, 1.0]
    assert c.dropout_structure == [0.0, 0.2, 0.0] and c.activation == "relu" and c.layer_norm is True


def test_too_small_width_is_refused():
    with pytest.raises(ConfigError, match="layer_structure"):
        hypernet.create(dims=[4], layer_structure=[1, 0.1, 1])


def test_legacy_dropout_rules():
    assert parse_dropout_structure([1, 2, 1], False, True) == [0, 0, 0]
    assert parse_dropout_structure([1, 2, 1], True, False) == [0, 0, 0]
    assert parse_dropout_structure([1, 2, 1], True, True) == [0, 0.3, 0]
    assert parse_dropout_structure([1, 2, 2, 1], True, False) == [0, 0.3, 0, 0]
    assert parse_dropout_structure([1, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0]
