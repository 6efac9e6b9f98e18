"""Which loaders read a file with our math: the rules, checked against a re-implementation of ComfyUI's reading."""
import json

import pytest
import torch

import hypernet
from hypernet.fileformat import compat
from hypernet.fileformat.container import load_object

ACTS = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}


def comfy_modules(state: dict, meta: dict):
    """ComfyUI's reading of one (k, v) pair as A1111-FACTS.md describes it: weights in key order, its defaults."""
    act = meta.get("activation_func", "linear")
    out = []
    for sd in state:
        names = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
        layers, i = [], 0
        while i < len(names):
            w, b = sd[names[i] + ".weight"], sd[names[i] + ".bias"]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.load_state_dict({"weight": w, "bias": b})
            layers.append(lin)
            if act != "linear" and (i != len(names) - 1 or meta.get("activate_output", False)):
                layers.append(ACTS[act]())
            if meta.get("is_layer_norm", False):
                i += 1
                ln = torch.nn.LayerNorm(sd[names[i] + ".weight"].shape[0])
                ln.load_state_dict({"weight": sd[names[i] + ".weight"], "bias": sd[names[i] + ".bias"]})
                layers.append(ln)
            if meta.get("use_dropout", False) and i != len(names) - 1:
                layers.append(torch.nn.Dropout(p=0.3))        # never put in eval mode there
            i += 1
        out.append(torch.nn.Sequential(*layers))
    return out


def _trained(**kw):
    hn = hypernet.create(dims=[16], seed=1, **kw)
    with torch.no_grad():
        for p in hn.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    return hn


def _same_in_comfy(path) -> bool:
    obj = load_object(path)
    meta = {k: v for k, v in obj.items() if isinstance(k, str)}
    k_mod, _ = comfy_modules(obj[16], meta)
    ours, _ = hypernet.load(path).modules_for(16)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return all(torch.allclose(x + k_mod(x), ours(x), atol=1e-6) for _ in range(3))


@pytest.mark.parametrize("kw,same", [
    (dict(activation="relu"), True),
    (dict(activation="tanh", dropout_structure=[0, 0.3, 0]), True),      # dropout: we write use_dropout False
    (dict(activation="linear", layer_norm=True), True),
    (dict(activation="elu", layer_norm=True, activate_output=True), True),
    (dict(activation="relu", layer_norm=True), False),                    # ComfyUI activates the output layer
])
def test_the_comfyui_rule_matches_what_comfyui_computes(tmp_path, kw, same):
    path = _trained(**kw).save(tmp_path / "x.pt")
    assert _same_in_comfy(path) is same
    reason = hypernet.load(path).readers["comfyui"]
    assert (reason is None) is same, reason


def test_dropout_files_say_use_dropout_false_and_keep_their_dropout(tmp_path):
    hn = _trained(activation="relu", dropout_structure=[0, 0.25, 0])
    path = hn.save(tmp_path / "drop.pt")
    stored = load_object(path)
    assert stored["use_dropout"] is False and stored["dropout_structure"] == [0.0, 0.25, 0.0]
    assert hypernet.load(path).config.dropout_structure == [0.0, 0.25, 0.0]   # the webui reads the same


def test_reasons_for_other_formats_and_activations(tmp_path, fixtures_dir):
    assert set(hypernet.load(_trained(activation="gelu").save(tmp_path / "g.pt")).readers) == {"webui", "comfyui"}
    gelu = hypernet.load(tmp_path / "g.pt").readers
    assert gelu["webui"] is None and "'gelu'" in gelu["comfyui"]
    st = hypernet.load(_trained().save(tmp_path / "s.safetensors")).readers
    assert "only .pt" in st["webui"] and "only from .pt" in st["comfyui"]
    webui_made = hypernet.load(fixtures_dir / "relu_121.pt").readers
    assert ".format_version" in webui_made["webui"]          # made on a current torch: safe.py refuses it
    assert "flicker" in compat.comfyui_reason("pt", {"activation_func": "relu", "use_dropout": True})
    assert "activate_output" in compat.comfyui_reason("pt", {"activation_func": "relu"})
    assert compat.comfyui_reason("pt", {}) is None           # NovelAI originals: linear, nothing to disagree on


def test_info_and_cards_say_it(tmp_path, capsys):
    from hypernet.apps.cli import main
    from hypernet.ui import metadata
    path = _trained(activation="relu", layer_norm=True).save(tmp_path / "ln.pt")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["readers"]["webui"] is None and "layer norm" in info["readers"]["comfyui"]
    assert "same math in the webui; not ComfyUI: with layer norm" in metadata.read(str(path))["same_math"]
