"""Session 10 probe: dgrad of the seed workloads in bf16 as a matrix product per grad_out row and
col2im in shared memory (s10_dgrad_col2im.cu), against torch's dgrad in the same process.

    PYTHONPATH=. python3 bench/probes/s10_dgrad_col2im.py OUT_DIR

A diagnostic, not a kernel of the package: it asks whether this shape of kernel can reach the
backward issue's dgrad target (within 2x of the floor: <= 0.34 ms on seed-b, <= 0.36 on seed-a in
bf16) before a template is written for it. Each configuration (input rows per block HR, input
planes per block DCH, m16 tiles per warp MTW, blocks an SM the registers are fitted to MINB) runs
on fresh random grad_out and weights with dx poisoned (NaN), is checked against float64 torch
(conv_transpose3d, the first two samples) and timed like every row of RESULTS.md
(measure.median_ms: CUDA events, median of 30, L2 flushed). The results of each run and what
changed between runs: bench/results/2026-11-22-h100-s10-dgrad-col2im-run*.md, bench/NOTES.md."""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.measure import median_ms, relative_error  # noqa: E402

HERE = Path(__file__).resolve().parent
SEEDS = {"seed-b": (3, 3, 3), "seed-a": (3, 5, 7)}
CONFIGS = {  # (HR, DCH, MTW, MINB); runs 1-7 (MTW 1-2 and 2-4, HR 8-32, DCH 8-64, MINB 1-4) kept this region
    "seed-b": [(hr, dch, 1, 2) for hr in (8, 16) for dch in (16, 32)] + [(8, 32, 1, 3)],
    "seed-a": [(hr, dch, 2, 1) for hr in (8, 16) for dch in (32, 64)],
}
BYTES_PER_MS = 3.0e9  # the H100's measured copy bandwidth, bytes per ms (RESULTS: 3.01 TB/s)
BF16_FLOPS_PER_MS = 7.9e11  # its measured BF16 matrix-product rate, per ms (RESULTS: 794 TFLOP/s)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    declaration = "void dgrad(torch::Tensor g, torch::Tensor w, torch::Tensor dx, int64_t hr, int64_t dch, int64_t mtw, int64_t minb);"
    ext = load_inline("s10_dgrad_col2im", cpp_sources=declaration, cuda_sources=(HERE / "s10_dgrad_col2im.cu").read_text(),
                      functions=["dgrad"], extra_cuda_cflags=["-O3", "-std=c++17"], verbose=False)
    props = torch.cuda.get_device_properties(0)
    lines = [f"## dgrad as a product per grad_out row and col2im (bf16): {props.name}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| workload | HR | DCH | MTW | MINB | ms | torch ms | x torch | floor ms | x floor | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, k in SEEDS.items():
        torch.manual_seed(0)
        shape = (16, 3, 64, 64, 64)
        o = [s - kk + 1 for s, kk in zip(shape[2:], k)]
        g = torch.randn(16, 64, *o, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(64, 3, *k, device="cuda") / (3 * k[0] * k[1] * k[2]) ** 0.5).to(torch.bfloat16)
        ref = F.conv_transpose3d(g[:2].double(), w.double())
        x = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
        def theirs():
            return torch.ops.aten.convolution_backward(g, x, w, None, [1] * 3, [0] * 3, [1] * 3, False, [0] * 3, 1,
                                                       [True, False, False])
        torch_ms = median_ms(theirs)
        flops = 2 * g.numel() * w[0].numel()  # a multiply-add per grad_out element and (ci, tap)
        floor_ms = max(flops / BF16_FLOPS_PER_MS, (g.numel() + x.numel() + w.numel()) * 2 / BYTES_PER_MS)
        dx = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
        for hr, dch, mtw, st in CONFIGS[name]:
            dx.fill_(float("nan"))
            ext.dgrad(g, w, dx, hr, dch, mtw, st)
            torch.cuda.synchronize()
            err = relative_error(dx[:2], ref)
            ms = median_ms(lambda: ext.dgrad(g, w, dx, hr, dch, mtw, st)) if err <= 1e-2 else float("nan")
            row = dict(workload=name, hr=hr, dch=dch, mtw=mtw, minb=st, ms=ms, torch_ms=torch_ms, floor_ms=floor_ms, err=err)
            rows.append(row)
            line = (f"| {name} | {hr} | {dch} | {mtw} | {st} | {ms:.3f} | {torch_ms:.3f} | {torch_ms / ms:.2f}x | {floor_ms:.3f} "
                    f"| {ms / floor_ms:.2f}x | {err:.1e} |")
            lines.append(line)
            print(line, flush=True)
        del g, x, dx, ref
        torch.cuda.empty_cache()
    (out / "s10_dgrad_col2im.md").write_text("\n".join(lines) + "\n")
    (out / "s10_dgrad_col2im.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
