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
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_forward import workload  # noqa: E402
from try_mma import build_entries, header, time_and_write  # noqa: E402
from conv3d_codegen.autotune import direct_candidates, render_tiles  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
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
    title = header("Depthwise template candidates", target)
    print(title, flush=True)

    plan = []  # (workload, dtype, label, source)
    for dtype in args.dtypes:
        work = workload(NAME, dtype)
        wide = wide_offsets(work.spec, work.input_shape)
        tiles = depthwise_candidates(work.spec) + ([] if args.no_direct else direct_candidates(work.spec))
        plan += [(NAME, dtype, f"{'dw' if t.template.endswith('depthwise.cu.j2') else 'direct'} {t}",
                  render_tiles(work.spec, t, wide)) for t in tiles]
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-try-depthwise-")), args.no_ptxas)

    time_and_write(entries, title, args.out, "try_depthwise")


if __name__ == "__main__":
    main()
