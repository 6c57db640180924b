"""Session 13 probe: seed-a's forward in bf16 as one wgmma product per output row
(s13_fwd_wgmma.cu: weights in the warpgroup's registers, Hankel blocks of the input rows in shared
memory as wgmma's B), against the tensor-core template's pick and torch in the same process.

    PYTHONPATH=. python3 bench/probes/s13_fwd_wgmma.py OUT_DIR [--parts]

A diagnostic, not a kernel of the package: it asks whether this shape of kernel reaches the
forward issue's seed-a bf16 target (<= 2.5x the floor, 0.44 ms) before a template is written for it.
Each configuration (output rows a chunk R, the Hankel blocks' stride CM, blocks an SM MINB, and
SWAP, the descriptor's two strides the other way round) runs on fresh random inputs with the output
poisoned (NaN), is checked against float64 torch (the first two samples; every element must be
written) and timed like every row of RESULTS.md (measure.median_ms: CUDA events, median, L2
flushed). The template's seed-a bf16 pick is built for the input's size and timed beside it by
try_mma's run_row. --parts times each configuration again with the Hankel build, the wgmmas or the
epilogue left out (a runtime flag; outputs unchecked). Needs sm_90a (the H100)."""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from try_mma import check_then_time, probe_baseline, work_of  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_mma import mma_candidates, render_mma  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = [(4, 144, 2, False), (4, 128, 2, False), (4, 144, 2, True)]  # (R, CM, MINB, SWAP): as PROBE_CONFIGS
PICK = "block_m=256 block_n=64 warps_m=8 warps_n=1 blocks_per_sm=2"
PARTS = {0: "whole", 1: "no Hankel build", 2: "no wgmma", 4: "no epilogue", 6: "Hankel build only"}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    declaration = ("void fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor y, int64_t r, int64_t cm, "
                   "int64_t minb, bool swap, int64_t parts);")
    ext = load_inline("s13_fwd_wgmma", cpp_sources=declaration, cuda_sources=(HERE / "s13_fwd_wgmma.cu").read_text(),
                      functions=["fwd"], extra_cuda_cflags=["-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a"],
                      verbose=False)
    work = work_of("seed-a", "bfloat16")
    spec, shape = work.spec, work.input_shape
    picks = [t for t in mma_candidates(spec) if str(t) == PICK]
    assert len(picks) == 1, "the template's seed-a bf16 pick changed: update the probe"
    template_row, lines = probe_baseline("seed-a", "bfloat16", PICK + ", built for 64^3",
                                         render_mma(spec, picks[0], wide_offsets(spec, shape), tuple(shape[2:])),
                                         "seed-a bf16 forward as a wgmma product per output row")
    floor_ms = template_row["floor_ms"]
    lines += ["| R | CM | MINB | SWAP | ms | x template pick | x torch | x floor | rel err |",
              "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    x, weight, bias = random_inputs(spec, shape)
    ref = F.conv3d(x[:2].double(), weight.double(), bias.double())
    y = torch.empty((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    rows = []
    for r, cm, minb, swap in CONFIGS:
        run = check_then_time(lambda: ext.fwd(x, weight, bias, y, r, cm, minb, swap, 0), y, ref, 1e-2)
        ms, err, whole = run["ms"], run["err"], run["all_written"]
        row = dict(r=r, cm=cm, minb=minb, swap=swap) | run
        if math.isnan(ms):  # where it goes wrong: error by channel group and by position block of sample 0's first row
            diff = (y[0, :, 0, 0].double() - ref[0, :, 0, 0]).abs()
            scale = ref[0, :, 0, 0].abs().mean().item()
            row["err_by_co16"] = [round(v / scale, 3) for v in diff.view(4, 16, -1).nan_to_num(99).mean((1, 2)).tolist()]
            row["err_by_ow8"] = [round(diff[:, 8 * b:8 * b + 8].nan_to_num(99).mean().item() / scale, 3) for b in range(8)]
            print(f"wrong: by 16 channels {row['err_by_co16']}, by 8 positions {row['err_by_ow8']}", flush=True)
        rows.append(row)
        line = (f"| {r} | {cm} | {minb} | {swap} | {ms:.3f} | {template_row['ms'] / ms:.2f}x | "
                f"{template_row['torch_ms'] / ms:.2f}x | {ms / floor_ms:.2f}x | {err:.1e}{'' if whole else ' (NaN left)'} |")
        lines.append(line)
        print(line, flush=True)
    if "--parts" in sys.argv:
        lines += ["", "Parts left out (outputs not checked):", "", "| R | CM | MINB | SWAP | " + " | ".join(PARTS.values()) + " |",
                  "|---|---|---|---|" + "---|" * len(PARTS)]
        for r, cm, minb, swap in CONFIGS:
            times = [median_ms(lambda: ext.fwd(x, weight, bias, y, r, cm, minb, swap, p)) for p in PARTS]
            lines.append(f"| {r} | {cm} | {minb} | {swap} | " + " | ".join(f"{t:.3f}" for t in times) + " |")
            print(lines[-1], flush=True)
    (out / "s13_fwd_wgmma.md").write_text("\n".join(lines) + "\n")
    (out / "s13_fwd_wgmma.json").write_text(json.dumps(dict(template=template_row | {"kernel": None}, rows=rows),
                                                       indent=1, default=str))


if __name__ == "__main__":
    main()
