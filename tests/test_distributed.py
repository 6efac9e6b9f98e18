"""Data-parallel training: two CPU processes under torchrun (gloo) train exactly what one process does with the
doubled batch, only process 0 writes files, and resuming stays exact."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hypernet
from hypernet.tiny import model as tiny
from hypernet.apps.cli import main
from hypernet.train.distributed import Group
from hypernet.hosts.diffusers import DiffusersHost
from hypernet.train.trainer import train
from test_train import make_images, opts, same_state, state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), n=6)   # global batch 4: epochs of a 4 and a 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny.pipeline("sd1", seed=1).save_pretrained(folder)
    return folder


def test_shards_split_a_batch_into_contiguous_nearly_equal_parts():
    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [Group(r, world).shard(n) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


class _SecondOfTwo(Group):
    """Process 1 of 2 inside one process: the all-reduce adds what an identical process 0 would have."""

    def __init__(self):
        super().__init__(rank=1, world_size=2)

    def all_reduce_sum(self, tensor):
        return tensor.mul_(2)

    def broadcast(self, tensor, src=0):
        return tensor


def test_a_process_other_than_0_writes_nothing(data_dir, tmp_path):
    host = DiffusersHost(tiny.pipeline("sd1", seed=1))
    hn = hypernet.create(dims=host.model_dims(), name="quiet", seed=0)
    before = state(hn)
    result = train(host, opts(data_dir, tmp_path, steps=3, save_every=1, preview_every=1, preview_steps=1,
                              output=str(tmp_path / "out.pt")), hn, show_progress=False, group=_SecondOfTwo())
    assert result.step == 3 and not same_state(state(hn), before)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "out.pt").exists() and not result.previews


def _torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "hypernet", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _close(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_two_processes_equal_one_with_the_doubled_batch_and_resume_exactly(model_dir, data_dir, tmp_path):
    # SGD with momentum (its state makes the resume check meaningful): Adam divides by sqrt(v), which turns
    # gradients that are float noise (a bias on the keys is invisible to softmax, so its gradient is 0 in exact
    # arithmetic) into full steps, and two correct layouts of the same sums then disagree there.
    common = ["--model", str(model_dir), "--data", str(data_dir), "--width", "64", "--height", "64",
              "--optimizer", "SGD", "--learning-rate", "0.5", "--lr-shape", "cosine", "--seed", "7", "--preview-every", "0",
              "--log-every", "1", "--save-every", "2", "--shuffle-tags", "--flip", "--latent-sampling", "random",
              "--name", "ddp", "--steps", "4"]
    single = tmp_path / "single.pt"
    assert main(["train", *common, "--batch-size", "4", "--log-dir", str(tmp_path / "one"), "--output", str(single)]) == 0

    two = tmp_path / "two.pt"
    r = _torchrun(*common, "--batch-size", "2", "--log-dir", str(tmp_path / "two"), "--output", str(two))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("completed at step 4") == 1 and "2 processes" in r.stdout   # one process reports
    assert _close(state(hypernet.load(single)), state(hypernet.load(two)))

    run = next((tmp_path / "two").rglob("settings.json")).parent        # one writer: nothing twice
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("settings")) == ["settings.json"]
    rows = list(csv.reader(open(run / "hypernetwork_loss.csv")))
    assert [r[0] for r in rows] == ["step", "1", "2", "3", "4"]
    ones = list(csv.reader(open(next((tmp_path / "one").rglob("hypernetwork_loss.csv")))))
    assert all(abs(float(a[3]) - float(b[3])) < 1e-4 for a, b in zip(rows[1:], ones[1:]))  # the same losses
    assert sorted(p.name for p in (run / "hypernetworks").iterdir()) == ["ddp-2.pt", "ddp-2.pt.optim", "ddp-4.pt",
                                                                         "ddp-4.pt.optim"]
    assert not _close(state(hypernet.load(two)), state(hypernet.load(run / "hypernetworks" / "ddp-2.pt")))

    resumed = tmp_path / "resumed.pt"
    r = _torchrun(*common, "--batch-size", "2", "--log-dir", str(tmp_path / "three"), "--output", str(resumed),
                  "--hypernetwork", str(run / "hypernetworks" / "ddp-2.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _close(state(hypernet.load(two)), state(hypernet.load(resumed)))
    assert hypernet.load(resumed).step == 4
