"""Loading a hypernetwork against torch.load of the same file, with a breakdown of where our time goes.

    python benchmarks/load_time.py [--dims 768,320,640,1280] [--repeats 9]

Prints medians over alternated repeats, measured side by side in one process (compare the ratios, not the
milliseconds: a busy machine slows every column alike). Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hypernet  # noqa: E402
from hypernet.fileformat import container, files  # noqa: E402


def _timed(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def _read_only(path) -> None:
    """The bytes alone: parse, check and map every storage, build nothing."""
    found = container.read(path)
    with container.Reader(found) as reader:
        for ref in found.refs():
            reader.tensor(ref)


def _finite_only(tensors) -> None:
    files.first_nonfinite(dict(enumerate(tensors)))


def measure(dims, repeats: int, clock=time.perf_counter):
    """(hypernetwork, {case: [seconds]}) for loading one default-layout file, cases alternated per repeat."""
    hn = hypernet.create(dims=list(dims), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        pt, st = hn.save(Path(tmp) / "b.pt"), hn.save(Path(tmp) / "b.safetensors")
        weights = [p.detach().clone() for p in hn.parameters()]
        cases = {
            "torch.load(weights_only=True)": lambda: torch.load(pt, weights_only=True),
            "hypernet.load .pt": lambda: hypernet.load(pt),
            "hypernet.load .safetensors": lambda: hypernet.load(st),
            "  of which: parse + map bytes": lambda: _read_only(pt),
            "  of which: finite check": lambda: _finite_only(weights),
            "header only (cards): inspect .pt": lambda: files.inspect(pt),
            "safetensors.torch.load_file": lambda: __import__("safetensors.torch").torch.load_file(st),
        }
        times = {name: [] for name in cases}
        for fn in cases.values():  # warm the page cache and the code paths
            fn()
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(_timed(fn, clock))
    return hn, times


def report(hn, times: dict) -> None:
    base = statistics.median(times["torch.load(weights_only=True)"])
    print(f"file: {hn.parameter_count():,} parameters ({hn.parameter_count() * 4 / 2**20:.1f} MiB), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{len(next(iter(times.values())))}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} {median * 1e3:8.1f} ms   {median / base:5.2f}x torch.load")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="768,320,640,1280")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    report(*measure([int(d) for d in args.dims.split(",")], args.repeats))


if __name__ == "__main__":
    main()
