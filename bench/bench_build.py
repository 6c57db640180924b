"""Build latency: cold build of one spec into an empty cache, then a warm load of it in a
fresh process (time from the request to a loaded kernel, imports excluded), then a batch
of specs built in parallel.

    python bench/bench_build.py [--out DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher, source_for  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402

WARM = """
import sys, time
import torch
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, source_for
from conv3d_codegen.workloads import WORKLOADS
torch.cuda.init()
start = time.perf_counter()
dispatcher = Dispatcher(KernelCache(sys.argv[1]))
kernel = dispatcher.loader.load(source_for(WORKLOADS["seed-a"].spec)[0], Target.for_device())
print((time.perf_counter() - start) * 1e3, dispatcher.cache.stats.builds)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conv3d-build-bench-"))
    target = Target.for_device()

    start = time.perf_counter()
    kernel = Dispatcher(KernelCache(root / "one")).loader.load(source_for(WORKLOADS["seed-a"].spec)[0], target)
    cold = time.perf_counter() - start

    warm_runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", WARM, str(root / "one")], capture_output=True, text=True,
                              cwd=REPO, check=True)
        ms, builds = done.stdout.split()
        assert builds == "0", "the warm load rebuilt"
        warm_runs.append(float(ms))

    specs = [w.spec.model_copy(update={"dtype": dt}) for w in WORKLOADS.values() for dt in ("float32", "bfloat16")]
    start = time.perf_counter()
    Dispatcher(KernelCache(root / "batch")).prebuild(specs)
    batch = time.perf_counter() - start

    text = (f"## Build latency, {torch.cuda.get_device_name()}, nvcc {target.cuda_version}\n\n"
            f"| what | time |\n|---|---|\n"
            f"| cold build of {kernel.name} (empty cache, load_inline) | {cold:.1f} s |\n"
            f"| warm load of it in a fresh process, imports excluded (3 runs) | "
            f"{', '.join(f'{ms:.1f}' for ms in warm_runs)} ms |\n"
            f"| {len(specs)} specs (6 workloads x 2 dtypes) built in parallel, {torch.get_num_threads()} threads "
            f"| {batch:.1f} s |\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
