"""Staged tensor-core template candidates on the seed workloads' input gradients and 'wide', next to
torch and the other tensor-core template's default, in one process.

    PYTHONPATH=. python3 bench/try_mma_staged.py --out DIR [--workloads dgrad-a dgrad-b wide] [--dtypes bfloat16 tf32]

'dgrad-a' and 'dgrad-b' are the input gradients of seed-a and seed-b as the forward convolutions
backward.input_grad runs them as (grad_out 16x64x62x60x58 -> 3 channels, the flipped 3x5x7 kernel,
padding 2x4x6; 16x64x62x62x62 -> 3, 3x3x3, padding 2; no bias). Builds every
mma_staged_candidates() tile choice of every row (and the EXTRA ones that fit, marked "(extra)")
and the default of conv3d_fwd_mma.cu.j2 at once
(KernelLoader.load_many over a fresh cache in a temporary folder), checks each against float64
torch on the first two samples with a NaN-poisoned output, then times it (CUDA events, median,
L2 flushed before each run) next to torch.nn.functional.conv3d on the same tensors. 'tf32' rows
are float32 with precision 'tf32' (m16n8k8 .tf32), timed against torch with cuDNN's TF32 allowed
(try_mma.run_row sets it for tf32 rows only). Checking, timing and the table are try_mma.py's.
Writes DIR/try_mma_staged.json and DIR/try_mma_staged.md, and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import try_mma  # noqa: E402
from try_mma import build_entries, header, time_and_write  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_grad import dgrad_spec  # noqa: E402
from conv3d_codegen.render_mma import default_mma_tiles, render_mma, supports_mma  # noqa: E402
from conv3d_codegen.render_mma_staged import MmaStagedTiles, mma_staged_candidates, render_mma_staged  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS, Workload  # noqa: E402

DGRADS = {"dgrad-a": "seed-a", "dgrad-b": "seed-b"}
# Tile choices timed beside the candidates (where they fit the spec), to learn what the cost
# model misjudges: deeper pipelines, larger stages, smaller and fatter tiles.
DGRAD_EXTRA = [MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=16, buffers=3, blocks_per_sm=1),
               MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=32, buffers=2, blocks_per_sm=1),
               MmaStagedTiles(th=4, tw=64, mt=2, block_co=3, ck=16, buffers=2, blocks_per_sm=2)]
# tf32 (where they fit): 16 channels a stage with fewer rows, fewer warps with more rows each,
# and for 'wide' blocks of 8 channels, two to an SM (the weights of 16 take 115 KB in tf32).
EXTRA = {"dgrad-a": DGRAD_EXTRA, "dgrad-b": DGRAD_EXTRA,
         "wide": [MmaStagedTiles(th=4, tw=32, mt=2, block_co=16, ck=32, buffers=2, blocks_per_sm=2),
                  MmaStagedTiles(th=8, tw=32, mt=4, block_co=16, ck=32, buffers=2, blocks_per_sm=1),
                  MmaStagedTiles(th=16, tw=32, mt=4, block_co=16, ck=16, buffers=3, blocks_per_sm=1),
                  MmaStagedTiles(th=16, tw=32, mt=8, block_co=8, ck=16, buffers=2, blocks_per_sm=1)]}
TF32_DGRAD_EXTRA = [MmaStagedTiles(th=8, tw=32, mt=2, block_co=3, ck=16, buffers=2, blocks_per_sm=1),
                    MmaStagedTiles(th=8, tw=32, mt=4, block_co=3, ck=8, buffers=2, blocks_per_sm=1),
                    MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=16, buffers=2, blocks_per_sm=1)]
TF32_EXTRA = {"dgrad-a": TF32_DGRAD_EXTRA, "dgrad-b": TF32_DGRAD_EXTRA,
              "wide": [MmaStagedTiles(th=8, tw=32, mt=4, block_co=8, ck=8, buffers=2, blocks_per_sm=2)]}


def work_of(name: str, dtype: str) -> Workload:
    """A seed's input gradient as the forward convolution it runs as (on grad_out's shape), or a
    workload of bench_forward's."""
    if name not in DGRADS:
        return try_mma.workload(name, dtype)
    seed = WORKLOADS[DGRADS[name]]
    spec = dgrad_spec(try_mma.workload(seed.name, dtype).spec)[0]
    n, _, d, h, w = seed.input_shape
    return Workload(name, spec, (n, spec.in_channels, *seed.spec.output_size(d, h, w)))


try_mma.work_of = work_of  # run_row looks the rows up through it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["dgrad-a", "dgrad-b", "wide"],
                        choices=list(DGRADS) + list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "tf32"], choices=["bfloat16", "float16", "tf32"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-ptxas", action="store_true", help="skip compiling each candidate alone for ptxas's report")
    parser.add_argument("--cache", type=Path, help="kernel cache to build into (default: a fresh temporary one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    target = Target.for_device()
    title = header("Staged tensor-core template candidates", target)
    print(title, flush=True)

    plan = []  # (workload, dtype, label, source)
    for name in args.workloads:
        for dtype in args.dtypes:
            work = work_of(name, dtype)
            wide = wide_offsets(work.spec, work.input_shape)
            found = mma_staged_candidates(work.spec)
            plan += [(name, dtype, str(t), render_mma_staged(work.spec, t, wide)) for t in found]
            extra = (TF32_EXTRA if dtype == "tf32" else EXTRA).get(name, [])
            plan += [(name, dtype, f"(extra) {t}", render_mma_staged(work.spec, t, wide)) for t in extra
                     if t not in found and t.problem(work.spec) is None]
            if supports_mma(work.spec) is None:
                tiles = default_mma_tiles(work.spec)
                plan.append((name, dtype, f"mma default: {tiles}", render_mma(work.spec, tiles, wide)))
    entries = build_entries(plan, target, args.cache or Path(tempfile.mkdtemp(prefix="conv3d-try-mma-staged-")),
                            args.no_ptxas)
    time_and_write(entries, title, args.out, "try_mma_staged")


if __name__ == "__main__":
    main()
