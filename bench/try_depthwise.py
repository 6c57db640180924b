"""Depthwise template candidates on the 'depthwise' workload, next to the direct template's and torch.

    PYTHONPATH=. python3 bench/try_depthwise.py --out DIR [--dtypes float32 bfloat16] [--no-direct]

Builds every depthwise_candidates() tile choice (and, unless --no-direct, the direct template's
candidates) of every dtype at once over a fresh cache in a temporary folder, checks each against
float64 torch on the first two samples with a NaN-poisoned output, then times it (CUDA events,
median, L2 flushed before each run) next to torch.nn.functional.conv3d on the same tensors
(cuDNN in IEEE float32 for float32). The floor is the larger of the FLOPs over the measured
matrix-product rate and the fewest bytes over the measured copy bandwidth; for this workload it
is the bytes. ptxas registers, spills and shared memory of each candidate come from compiling
it alone for the device's arch. Writes DIR/try_depthwise.json and DIR/try_depthwise.md, and
prints the table. (Checking, timing and the table are try_mma.py's.)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_forward import workload  # noqa: E402
from try_mma import ptxas_reports, time_and_write  # noqa: E402
from conv3d_codegen.autotune import direct_candidates, render_tiles  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.kernel import KernelLoader  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_depthwise import depthwise_candidates  # noqa: E402

NAME = "depthwise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-direct", action="store_true", help="leave out the direct template's candidates")
    parser.add_argument("--no-ptxas", action="store_true", help="skip compiling each candidate alone for ptxas's report")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    target = Target.for_device()
    props = torch.cuda.get_device_properties(0)
    header = (f"## Depthwise template candidates: {props.name} ({target.arch}), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, nvcc {target.cuda_version}")
    print(header, flush=True)

    plan = []  # (dtype, label, source)
    for dtype in args.dtypes:
        work = workload(NAME, dtype)
        wide = wide_offsets(work.spec, work.input_shape)
        tiles = depthwise_candidates(work.spec) + ([] if args.no_direct else direct_candidates(work.spec))
        plan += [(dtype, f"{'dw' if t.template.endswith('depthwise.cu.j2') else 'direct'} {t}",
                  render_tiles(work.spec, t, wide)) for t in tiles]
    sources = [p[2] for p in plan]

    loader = KernelLoader(KernelCache(Path(tempfile.mkdtemp(prefix="conv3d-try-depthwise-"))))
    started = time.perf_counter()
    kernels = loader.load_many(sources, target)
    print(f"built {len(sources)} kernels in {time.perf_counter() - started:.1f} s", flush=True)
    for (dtype, label, _), kernel in zip(plan, kernels):
        if isinstance(kernel, Exception):
            print(f"BUILD FAILED {dtype} {label}:\n{kernel}", flush=True)

    reports = [None] * len(sources) if args.no_ptxas else ptxas_reports(sources, target)
    entries = {}
    for (dtype, label, source), kernel, report in zip(plan, kernels, reports):
        ok = report is not None and not isinstance(report, Exception)
        entries.setdefault((NAME, dtype), []).append(dict(
            tiles=label, kernel=kernel, regs=report.registers if ok else "-",
            spills=report.spill_store_bytes + report.spill_load_bytes if ok else "-",
            smem=report.shared_bytes if ok else 0))
        if ok:
            print(f"ptxas {dtype} {label}: {report.registers} registers, {report.spill_store_bytes} B spill "
                  f"stores, {report.spill_load_bytes} B spill loads, {report.shared_bytes} B smem, "
                  f"{report.seconds:.1f} s", flush=True)

    time_and_write(entries, header, args.out, "try_depthwise")


if __name__ == "__main__":
    main()
