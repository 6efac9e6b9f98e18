"""Training where users train: the webui's half precision and FP8 weights, Forge's fp16/bf16/fp8 storage. Each runs
on a stand-in as strict as the host (tests/models.py: the webui's apply_model casts, its float32 conditioning, FP8
weights that compute only inside its autocast; Forge's per-call weight casts on inference tensors), trains with
float32 master weights, and writes a file that applies there."""
import importlib

import pytest
import torch

import hypernet
from hypernet import HypernetError
from hypernet.tiny import model as tiny
from hypernet.hosts.webui import ForgeHost, WebuiHost, make_host
from hypernet.train.precision import compute_dtype
from hypernet.train.trainer import Trainer, train
from models import StandInForge, StandInLatentDiffusion, tiny_ldm_unet, webui_precision
from test_train import make_images, opts
from webui_stub.harness import stub_modules


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture
def devices(tmp_path):
    """The stand-in webui's modules.devices, importable as the host imports it."""
    with stub_modules(tmp_path):
        yield importlib.import_module("modules.devices")


def webui_model(devices, mode, parameterization="eps", upcast_attn=False, sdxl=False):
    return webui_precision(StandInLatentDiffusion(parameterization, devices=devices, sdxl=sdxl), mode, upcast_attn)


def forge_model(storage, compute):
    return StandInForge(tiny_ldm_unet(context_dim=32), text_encoder=tiny.pipeline("sd1", seed=3).text_encoder,
                        tokenizer=tiny.tokenizer(), storage=storage, compute=compute)


def trained(host, data_dir, tmp_path, **kw):
    """Two steps from a new file; (result, trainer, the file it wrote)."""
    hn = hypernet.create(dims=host.model_dims(), name="prec", seed=0)
    trainer = Trainer(host, opts(data_dir, tmp_path, steps=2, **kw), hn, show_progress=False)
    result = trainer.run()
    return result, trainer, hypernet.load(result.output)


def prediction(host, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    cond = host.encode_prompts(["a red square"])
    with torch.no_grad():
        return host.predict(x, torch.tensor([500]), cond).float()


def applies(host, hn) -> bool:
    """Whether the file changes the host's prediction, and strength 0 gives back the base exactly."""
    base = prediction(host)
    with hypernet.attach(host.unet, [(hn, 1.0)], warn=False):
        tagged = prediction(host)
    with hypernet.attach(host.unet, [(hn, 0.0)], warn=False):
        zero = prediction(host)
    return bool(torch.isfinite(tagged).all()) and not torch.equal(tagged, base) and torch.equal(zero, base)


def master_weights_float32(trainer) -> bool:
    states = [t for s in trainer.optimizer.state.values() for t in s.values()
              if isinstance(t, torch.Tensor) and t.dim() > 0]
    return bool(states) and all(p.dtype == torch.float32 for p in trainer.hn.parameters()) \
        and all(t.dtype == torch.float32 for t in states)


# ---------------------------------------------------------------------------------------------- the stand-ins
def test_the_webui_half_stand_in_refuses_a_plain_float32_conditioning_as_the_webui_does(devices):
    model = webui_model(devices, "half")
    cond = model.get_learned_conditioning(["a red square"])
    assert cond.dtype == torch.float32 and model.model.diffusion_model.dtype == torch.float16
    with pytest.raises(RuntimeError):
        model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond)


def test_the_fp8_stand_in_computes_only_inside_the_webuis_autocast(devices):
    model = webui_model(devices, "fp8")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float8_e4m3fn
    with pytest.raises(RuntimeError):
        model.get_learned_conditioning(["a red square"])
    with devices.autocast():
        assert torch.isfinite(model.get_learned_conditioning(["a red square"])).all()


# ---------------------------------------------------------------------------------------------- the webui
@pytest.mark.parametrize("mode,parameterization,upcast,sdxl,computes", [
    ("full", "eps", False, False, torch.float32), ("half", "eps", False, False, torch.float16),
    ("half", "v", True, False, torch.float16),    # SD2 (v-prediction), Upcast cross attention to float32
    ("half", "eps", False, True, torch.float16),  # SDXL's dict conditioning
    ("fp8", "eps", False, False, torch.bfloat16), ("fp8", "eps", False, True, torch.bfloat16)])
def test_the_webui_trains_in_each_precision_and_the_file_applies(devices, data_dir, tmp_path, mode,
                                                                 parameterization, upcast, sdxl, computes):
    host = WebuiHost(webui_model(devices, mode, parameterization, upcast, sdxl))
    assert host.is_sdxl == sdxl
    assert compute_dtype(host) == computes
    result, trainer, hn = trained(host, data_dir, tmp_path)
    assert result.step == 2 and result.last_loss is not None and torch.isfinite(torch.tensor(result.last_loss))
    assert master_weights_float32(trainer)
    assert (trainer.scaler is not None) == (computes == torch.float16)   # loss scaling for float16 gradients only
    assert applies(host, hn)


def test_the_webui_with_lowvram_on_a_gpu_is_refused_before_any_step(devices, data_dir, tmp_path):
    model = webui_model(devices, "full")

    def send_me_to_gpu(module, args):   # the webui's --lowvram hook (modules/lowvram.py), by its name
        return None

    model.model.diffusion_model.input_blocks[0].register_forward_pre_hook(send_me_to_gpu)
    host = WebuiHost(model, device="cuda")
    hn = hypernet.create(dims=host.model_dims(), name="low", seed=0)
    with pytest.raises(HypernetError, match="--medvram"):
        train(host, opts(data_dir, tmp_path, steps=2), hn, show_progress=False)
    assert not (tmp_path / "logs").exists()   # refused before the data or the log folder


# ---------------------------------------------------------------------------------------------- Forge
@pytest.mark.parametrize("storage,compute", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                             (torch.float8_e4m3fn, torch.float16),
                                             (torch.float8_e5m2, torch.bfloat16)])
def test_forge_trains_each_storage_mode_and_the_file_applies(data_dir, tmp_path, storage, compute):
    host = make_host(forge_model(storage, compute))
    assert isinstance(host, ForgeHost) and compute_dtype(host) == compute
    assert next(host.unet.parameters()).dtype == storage
    result, trainer, hn = trained(host, data_dir, tmp_path)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.last_loss))
    assert master_weights_float32(trainer)
    assert (trainer.scaler is not None) == (compute == torch.float16)
    assert next(host.unet.parameters()).dtype == storage          # the storage is left as Forge keeps it
    assert applies(host, hn)


# ---------------------------------------------------------------------------------------------- loss scaling
def test_float16_overflow_is_skipped_counted_and_never_written(devices, data_dir, tmp_path, monkeypatch):
    """A loss scale far too high overflows the float16 backward: those steps are skipped and counted, the scale comes
    down, and every step still trains."""
    host = WebuiHost(webui_model(devices, "half"))
    monkeypatch.setattr(Trainer, "_grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=2.0 ** 40))
    result, trainer, hn = trained(host, data_dir, tmp_path)
    assert result.step == 2 and result.overflow_steps >= 1 and result.skipped_steps == 0
    assert trainer.scaler.get_scale() < 2.0 ** 40
    assert hn.is_finite() and applies(host, hn)
