"""Session 11 probe: seed-b's forward in bf16 as a matrix product per output row
(s11_fwd_rows.cu: weights in registers, input rows staged twice in shared memory, nothing gathered),
against the tensor-core template's pick and torch in the same process.

    PYTHONPATH=. python3 bench/probes/s11_fwd_rows.py OUT_DIR [--parts | --once R,RW,MINB,STAGED]

A diagnostic, not a kernel of the package: it asks whether this shape of kernel reaches the
forward issue's seed-b bf16 target (<= 0.29 ms, 3x Triton's 0.88) before a template is written for
it. Each configuration (output rows per chunk R, warps along rows RW, blocks an SM the registers
are fitted to MINB, and whether the output leaves from the accumulators (16 bytes to each of 8 channels a
store) or is staged in shared memory per chunk (256 contiguous bytes of one channel a store)) runs on fresh random inputs with the output poisoned (NaN),
is checked against float64 torch (the first two samples) and timed like every row of RESULTS.md
(measure.median_ms: CUDA events, median, L2 flushed). The template's seed-b bf16 pick (256x64,
8 warps, 2 blocks an SM) is built and timed beside it by try_mma's run_row. --parts times the
best configurations again with the stores, the K loop, or both left out (a runtime flag the compiler
cannot see; outputs unchecked), as session 9 did for the template; --once R,RW,MINB,STAGED runs one
configuration three times and nothing else (for ncu)."""
import json
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
CONFIGS = [(16, 1, 2, False), (4, 1, 3, True), (4, 2, 2, True), (6, 1, 2, True), (6, 2, 2, True),
           (8, 1, 1, True), (8, 2, 1, True), (8, 4, 1, True)]  # (R, RW, MINB, output staged in shared memory)
PICK = "block_m=256 block_n=64 warps_m=8 warps_n=1 blocks_per_sm=2"


PARTS = {0: "whole", 1: "no stores", 2: "no K loop", 3: "neither"}
PARTS_CONFIGS = [(16, 1, 2, False), (4, 1, 3, True), (8, 2, 1, True)]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    declaration = ("void fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor y, int64_t r, int64_t rw, "
                   "int64_t minb, bool staged, int64_t parts);")
    ext = load_inline("s11_fwd_rows", cpp_sources=declaration, cuda_sources=(HERE / "s11_fwd_rows.cu").read_text(),
                      functions=["fwd"], extra_cuda_cflags=["-O3", "-std=c++17"], verbose=False)
    work = work_of("seed-b", "bfloat16")
    spec, shape = work.spec, work.input_shape
    if "--once" in sys.argv:
        r, rw, minb, staged = (int(v) for v in sys.argv[sys.argv.index("--once") + 1].split(","))
        x, weight, bias = random_inputs(spec, shape)
        y = torch.empty((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
        for _ in range(3):
            ext.fwd(x, weight, bias, y, r, rw, minb, bool(staged), 0)
        torch.cuda.synchronize()
        return
    picks = [t for t in mma_candidates(spec) if str(t) == PICK]
    assert len(picks) == 1, "the template's seed-b bf16 pick changed: update the probe"
    template_row, lines = probe_baseline("seed-b", "bfloat16", PICK, render_mma(spec, picks[0], wide_offsets(spec, shape)),
                                         "seed-b bf16 forward as a product per output row")
    floor_ms = template_row["floor_ms"]
    lines += ["| R | RW | MINB | output staged | ms | x template pick | x torch | x floor | rel err |",
              "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    x, weight, bias = random_inputs(spec, shape)
    ref = F.conv3d(x[:2].double(), weight.double(), bias.double())
    y = torch.empty((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    rows = []
    for r, rw, minb, staged in CONFIGS:
        run = check_then_time(lambda: ext.fwd(x, weight, bias, y, r, rw, minb, staged, 0), y, ref, 1e-2)
        ms, err, whole = run["ms"], run["err"], run["all_written"]
        rows.append(dict(r=r, rw=rw, minb=minb, staged=staged) | run)
        line = (f"| {r} | {rw} | {minb} | {staged} | {ms:.3f} | {template_row['ms'] / ms:.2f}x | "
                f"{template_row['torch_ms'] / ms:.2f}x | {ms / floor_ms:.2f}x | {err:.1e}{'' if whole else ' (NaN left)'} |")
        lines.append(line)
        print(line, flush=True)
    if "--parts" in sys.argv:
        lines += ["", "Parts left out (outputs not checked):", "", "| R | RW | MINB | " + " | ".join(PARTS.values()) + " |",
                  "|---|---|---|" + "---|" * len(PARTS)]
        for r, rw, minb, staged in PARTS_CONFIGS:
            times = [median_ms(lambda: ext.fwd(x, weight, bias, y, r, rw, minb, staged, p)) for p in PARTS]
            lines.append(f"| {r} | {rw} | {minb} | " + " | ".join(f"{t:.3f}" for t in times) + " |")
            print(lines[-1], flush=True)
    (out / "s11_fwd_rows.md").write_text("\n".join(lines) + "\n")
    (out / "s11_fwd_rows.json").write_text(json.dumps(dict(template=template_row | {"kernel": None}, rows=rows),
                                                      indent=1, default=str))


if __name__ == "__main__":
    main()
