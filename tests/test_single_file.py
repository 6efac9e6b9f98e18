"""Single-file checkpoints (hosts/single_file.py): tiny files in the original ldm / sgm layouts, written from real
modules (tests/single_files.py), load offline into diffusers pipelines that compute what the original modules do."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import single_files as sf
from hypernet.errors import HypernetError
from hypernet.hosts.diffusers import load_pipeline
from hypernet.hosts import single_file

ROOT = Path(__file__).resolve().parents[1]
NOISY = ("requires torchvision", "accelerate", "low_cpu_mem_usage", "torch_dtype", "Traceback")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One tiny checkpoint per family (SD2 with v-like weights), and its loaded pipeline."""
    folder = tmp_path_factory.mktemp("single")
    out = {}
    for kind in ("sd1", "sd2", "sdxl"):
        w = sf.write(folder / f"{kind}.safetensors", kind, v_like=True if kind == "sd2" else None)
        out[kind] = (w, load_pipeline(w.path))
    return out


def _ids(tokenizer, text="a photo of a cat"):
    return tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
@torch.no_grad()
def test_loaded_unet_and_vae_compute_what_the_ldm_modules_compute(written, kind):
    from ldm.modules.diffusionmodules.util import timestep_embedding
    w, pipe = written[kind]
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 900])
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=gen)
    if kind == "sdxl":
        pooled = torch.randn(2, sf.POOLED, generator=gen)
        time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
        # sgm's conditioner: the pooled text embedding, then each size / crop number as a timestep embedding
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), sf.TIME_DIM).reshape(2, -1)], dim=1)
        ref = w.unet(x, t, context=[context] * 2, y=y)  # ldm's deeper SpatialTransformer takes one per layer
        out = pipe.unet(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    else:
        ref = w.unet(x, t, context=context)
        out = pipe.unet(x, t, context).sample
    assert ref.abs().mean() > 0.01 and torch.allclose(out, ref, atol=1e-5, rtol=1e-4)

    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    mean = w.quant_conv(w.encoder(image))[:, :4]
    assert torch.allclose(pipe.vae.encode(image).latent_dist.mean, mean, atol=1e-5, rtol=1e-4)
    z = torch.randn(1, 4, 8, 8, generator=gen)
    assert torch.allclose(pipe.vae.decode(z).sample, w.decoder(w.post_quant_conv(z)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
@torch.no_grad()
def test_loaded_text_encoders_give_the_conditioning_each_family_uses(written, kind):
    w, pipe = written[kind]
    ids = _ids(pipe.tokenizer)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and len(pipe.tokenizer) == 49408
    if kind == "sd1":
        ref = w.text[0](ids).last_hidden_state
        assert torch.allclose(pipe.text_encoder(ids).last_hidden_state, ref, atol=1e-5)
    elif kind == "sd2":
        # SD2 conditions on the penultimate layer, then the final norm: the loaded tower stops a layer early
        original = w.text[0]
        hidden = original(ids, output_hidden_states=True).hidden_states[-2]
        final_norm = getattr(original, "text_model", original).final_layer_norm
        assert pipe.text_encoder.config.num_hidden_layers == original.config.num_hidden_layers - 1
        assert torch.allclose(pipe.text_encoder(ids).last_hidden_state, final_norm(hidden), atol=1e-5)
        assert pipe.tokenizer.pad_token == "!" and ids[0, -1] == 0
    else:  # SDXL reads both towers' penultimate layers, and the second's pooled projection
        for original, loaded in zip(w.text, (pipe.text_encoder, pipe.text_encoder_2)):
            ref = original(ids, output_hidden_states=True)
            got = loaded(ids, output_hidden_states=True)
            assert torch.allclose(got.hidden_states[-2], ref.hidden_states[-2], atol=1e-5)
        assert torch.allclose(got.text_embeds, ref.text_embeds, atol=1e-5)
        assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"


def test_each_family_gets_its_pipeline_scheduler_and_vae_scale(written):
    expected = {"sd1": ("StableDiffusionPipeline", "PNDMScheduler", "epsilon", 0.18215),
                "sd2": ("StableDiffusionPipeline", "DDIMScheduler", "v_prediction", 0.18215),
                "sdxl": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "epsilon", 0.13025)}
    for kind, (pipeline, scheduler, prediction, scale) in expected.items():
        pipe = written[kind][1]
        assert (type(pipe).__name__, type(pipe.scheduler).__name__, pipe.scheduler.config.prediction_type,
                pipe.vae.config.scaling_factor) == (pipeline, scheduler, prediction, scale)
        assert pipe.single_file_plan["kind"] == kind and not pipe.unet.training


def test_sd2_prediction_comes_from_the_weights_and_the_flag_overrides_it(tmp_path):
    eps = sf.write(tmp_path / "eps.safetensors", "sd2", v_like=False).path
    v = sf.write(tmp_path / "v.safetensors", "sd2", v_like=True).path
    plan = lambda path, **kw: single_file.plan(single_file.open_checkpoint(path), **kw)  # noqa: E731
    assert (plan(eps)["prediction_type"], plan(eps)["config"]) == ("epsilon", "sd2-base")
    assert (plan(v)["prediction_type"], plan(v)["config"]) == ("v_prediction", "sd2")
    assert "above 0.09" in plan(v)["why"]
    assert plan(v, prediction_type="epsilon")["prediction_type"] == "epsilon"
    assert plan(eps, prediction_type="v")["why"] == "--prediction-type v"
    pipe = load_pipeline(eps, prediction_type="v")
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.sample_size == 96


def test_a_v_pred_key_marks_an_sdxl_file_as_v_prediction(tmp_path):
    path = sf.write(tmp_path / "xl.safetensors", "sdxl", extra={"v_pred": torch.tensor([])}).path
    assert single_file.plan(single_file.open_checkpoint(path))["prediction_type"] == "v_prediction"


def test_a_ckpt_in_lightning_layout_loads_like_the_safetensors_and_half_files_load_as_float(tmp_path):
    st = sf.write(tmp_path / "m.safetensors", "sd1", seed=3)
    ck = sf.write(tmp_path / "m.ckpt", "sd1", seed=3, dtype=torch.float16)
    a, b = load_pipeline(st.path), load_pipeline(ck.path)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        assert all(sb[k].dtype == sa[k].dtype and torch.allclose(sa[k], sb[k], atol=2e-3) for k in sa)
    assert any(not torch.equal(a.unet.state_dict()[k], b.unet.state_dict()[k]) for k in a.unet.state_dict())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_ckpt_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    w = sf.build("sd1")
    torch.save({"state_dict": w.state, "callbacks": _Payload(str(marker))}, str(tmp_path / "evil.ckpt"))
    with pytest.raises(HypernetError, match=r"refused.*asks for [a-z.]*open\).*nothing in it ran.*\.safetensors"):
        load_pipeline(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_files_that_are_not_whole_sd_checkpoints_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file
    state = sf.build("sd1").state
    cases = {
        "unet-only": ({k: v for k, v in state.items() if k.startswith("model.")}, "has no VAE"),
        "no-text": ({k: v for k, v in state.items() if not k.startswith("cond_stage")}, "no text encoder"),
        "refiner": ({**{k: v for k, v in state.items() if not k.startswith("cond_stage")},
                     "conditioner.embedders.0.model.text_projection": torch.zeros(2, 2)}, "SDXL refiner"),
        "inpaint": ({**state, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)},
                    "9 input channels"),
        "damaged": ({k: v for k, v in state.items() if "out.2.weight" not in k}, "lacks the weight"),
        "hypernetwork": ({"768.0.linear.0.weight": torch.zeros(2, 2)}, "has no UNet"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        with pytest.raises(HypernetError, match=message) as info:
            load_pipeline(path)
        assert str(path) in str(info.value), name
    good = sf.write(tmp_path / "sd1.safetensors", "sd1").path
    with pytest.raises(HypernetError, match="laid out as SD1"):
        load_pipeline(good, kind="sdxl")
    with pytest.raises(HypernetError, match="--prediction-type"):
        load_pipeline(good, prediction_type="x0")


# ---------------------------------------------------------------------------------------------- full-size facts
def _shapes(module, prefix):
    return {prefix + k: SimpleNamespace(shape=tuple(v.shape)) for k, v in module.state_dict().items()}


def _full_size_shapes(kind):
    """The tensor shapes of a real SD1.5 / SD2.1 file, from the original classes built on the meta device."""
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel
    facts = single_file.shipped_config("sd1" if kind == "sd1" else "sd2")
    unet = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                num_res_blocks=2, channel_mult=[1, 2, 4, 4], use_spatial_transformer=True, transformer_depth=1,
                use_checkpoint=False, legacy=False)
    unet.update(num_heads=8, context_dim=768) if kind == "sd1" else \
        unet.update(num_head_channels=64, context_dim=1024, use_linear_in_transformer=True)
    dd = dict(ch=128, out_ch=3, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(), in_channels=3,
              resolution=256, z_channels=4, double_z=True)
    text = {k: v for k, v in facts["text_encoder"].items() if k not in ("architectures", "model_type")}
    if kind == "sd2":
        text["num_hidden_layers"] = 24   # the file holds all 24 OpenCLIP layers
    with torch.device("meta"):
        shapes = _shapes(UNetModel(**unet), "model.diffusion_model.")
        shapes.update(_shapes(Encoder(**dd), "first_stage_model.encoder."))
        shapes.update(_shapes(Decoder(**dd), "first_stage_model.decoder."))
        tower = CLIPTextModel(CLIPTextConfig(**text))
    if kind == "sd1":
        keys = sf._text_model_keys(tower)
        shapes.update({"cond_stage_model.transformer." + k: SimpleNamespace(shape=tuple(v.shape))
                       for k, v in keys.items()})
    else:
        keys = sf.open_clip_keys(tower)
        keys["text_projection"] = torch.empty(1024, 1024, device="meta")
        shapes.update({"cond_stage_model.model." + k: SimpleNamespace(shape=tuple(v.shape)) for k, v in keys.items()})
    return shapes


def _as_built(cls, config):
    """The config a diffusers model ends up with (defaults filled in), built on the meta device."""
    with torch.device("meta"):
        model = cls.from_config(config)
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_full_size_shapes_land_exactly_on_the_shipped_configs(kind):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    ckpt = single_file.Checkpoint("full.safetensors", None, _full_size_shapes(kind))
    p = single_file.plan(ckpt, prediction_type="auto" if kind == "sd1" else "v")
    facts = p["facts"]
    assert p["config"] == ("sd1" if kind == "sd1" else "sd2")
    assert _as_built(UNet2DConditionModel, p["unet"]) == _as_built(UNet2DConditionModel, facts["unet"])
    assert _as_built(AutoencoderKL, p["vae"]) == _as_built(AutoencoderKL, facts["vae"])
    (_, _, _, text), = p["text_encoders"]
    assert text == facts["text_encoder"]


# ---------------------------------------------------------------------------------------------- command line
def _train(model, data, out, tmp_path):
    cmd = [sys.executable, "-m", "hypernet", "train", "--model", str(model), "--data", str(data), "--steps", "2",
           "--width", "64", "--height", "64", "--log-dir", str(tmp_path / "logs"), "--output", str(out),
           "--preview-every", "0", "--seed", "1", "--name", "same"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"completed at step 2: {out}" in r.stdout
    assert not [line for line in r.stderr.splitlines() if any(word in line for word in NOISY)], r.stderr[-2000:]
    return r


def test_cli_trains_on_a_single_file_offline_as_on_the_same_model_as_a_folder(tmp_path):
    import hypernet
    from hypernet.tiny.demo import make_style_dataset
    model = sf.write(tmp_path / "model.safetensors", "sd1").path
    data = make_style_dataset(tmp_path / "data", count=2)
    r = _train(model, data, tmp_path / "single.safetensors", tmp_path)
    assert f"model: {model} read as SD1, epsilon (SD1 models predict noise" in r.stdout
    folder = tmp_path / "folder"
    load_pipeline(model).save_pretrained(folder)
    r = _train(folder, data, tmp_path / "folder.safetensors", tmp_path)
    assert "read as" not in r.stdout
    a, b = hypernet.load(tmp_path / "single.safetensors"), hypernet.load(tmp_path / "folder.safetensors")
    assert a.step == b.step == 2
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.parameters(), b.parameters()))


def test_ui_command_passes_the_model_flags(monkeypatch):
    import hypernet.apps.standalone
    from hypernet.apps.cli import main
    seen = {}
    monkeypatch.setattr(hypernet.apps.standalone, "serve", lambda *a, **kw: seen.update(kw, model=a[0]))
    assert main(["ui", "--model", "m.safetensors", "--model-kind", "sd2", "--prediction-type", "v"]) == 0
    assert (seen["model"], seen["kind"], seen["prediction_type"]) == ("m.safetensors", "sd2", "v")
