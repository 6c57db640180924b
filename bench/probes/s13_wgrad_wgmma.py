"""Session 13 probe: seed-a's weight gradient in bf16 as wgmma products per grad_out row
(s13_wgrad_wgmma.cu: grad_out rows as A in registers, the forward probe's Hankel blocks of the input
rows as B, two warpgroups splitting N, per-block partial sums added in a fixed order), against
torch's weight gradient (convolution_backward) in the same process.

    PYTHONPATH=. python3 bench/probes/s13_wgrad_wgmma.py OUT_DIR [--once DIST,DIST...]

A diagnostic, not a kernel of the package: it asks whether this shape of kernel brings seed-a's bf16
wgrad within the backward issue's 2x of its floor (0.35 ms; the shipped tensor-core wgrad's pick ran
0.67 ms in RESULTS' backward v8) before a template is written for it. The gradient of fresh random
inputs (dW poisoned with NaN first) is checked against float64 torch over the whole batch, then timed
like every row of RESULTS.md (measure.median_ms: CUDA events, median, L2 flushed), with torch's; with
grad_out by bulk copies of 4-row chunks regrouped into row slots (run 5), with A from shared memory through
a ring of 4 or 5 row slots (runs 3, 4), and with A in registers loaded 2 or 3 rows ahead (runs 1, 2; set
DISTS to time them), each also with parts left
out (a runtime flag; unchecked): the Hankel stores, and the grad_out stream (every row's A from the
block's first row). A variant that is wrong is reported and not timed. Needs sm_90a (the H100)."""
import json
import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.measure import median_ms, relative_error  # noqa: E402

HERE = Path(__file__).resolve().parent
FLOOR_MS = 0.17   # RESULTS backward v8: seed-a bf16 wgrad's floor (grad_out read once at copy bandwidth)
SHIPPED_MS = 0.67  # RESULTS backward v8: the shipped wgrad pick (mma warps_n=8 nt=6 owc=64 warps_m=1 mt=4)
# 2, 3: rows ahead that a grad_out row's A registers are loaded; 14, 15: A from shared memory too, a ring of 4 or 5
# row slots (runs 3 and 4); 24-27: grad_out by bulk copies of 4-row chunks, regrouped into 4 slots (runs 5, 6), the
# copies issued by warp 0 or by every warp, the next Hankel half's x rows loaded when stored or a row before; 34: the
# work split by warpgroup (two issue wgmmas, one copies, regroups and builds the Hankel halves; run 7); 44, 45: each
# grad_out row by the bulk tensor copy engine straight into its slot, a ring of 4 or 5 slots (run 8: a box whose
# innermost start is not 16-byte aligned is an illegal instruction, so they fail; set DISTS to see); 31: as 27, the
# copies issued after the row's wgmmas (run 9); 35: as 34 with two producer warpgroups, one for the stream and the
# regroup, one for the Hankel halves (run 10); 39: as 31, two rows regrouped at rows 0 and 2 of a chunk (5 slots; run 11)
DISTS = (39, 31)
KIND = {2: "A 2 rows ahead", 3: "A 3 rows ahead", 14: "A from shared memory, 4 slots", 15: "A from shared memory, 5 slots",
        24: "bulk copies by warp 0", 25: "bulk copies by every warp", 26: "bulk copies by warp 0, x a row early",
        27: "bulk copies by every warp, x a row early", 34: "bulk copies, the work split by warpgroup",
        35: "bulk copies, two producer warpgroups", 39: "as run 9, rows regrouped in pairs",
        31: "bulk copies by every warp after the wgmmas, x a row early", 44: "rows by tensor copies, 4 slots", 45: "rows by tensor copies, 5 slots"}
PARTS_OF = {31: (0,), 39: (0, 1)}  # the parts timed for a kernel, where not (0, 2); 2 and 3 time all four (0, 1, 2, 3)
PARTS = {0: "", 1: ", without the Hankel stores", 2: ", every A from the block's first row or chunk (cache hits)", 3: ", neither",
         4: ", without the regroup", 5: ", without the Hankel stores or the regroup"}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ext = load_inline("s13_wgrad_wgmma", cpp_sources="void wgrad(torch::Tensor x, torch::Tensor dy, torch::Tensor partial, "
                      "torch::Tensor dw, int64_t dist, int64_t parts);", cuda_sources=(HERE / "s13_wgrad_wgmma.cu").read_text(),
                      functions=["wgrad"], extra_cuda_cflags=["-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
                                                              "-lineinfo"])
    torch.manual_seed(13)
    x = torch.randn(16, 3, 64, 64, 64, device="cuda").bfloat16()
    dy = torch.randn(16, 64, 62, 60, 58, device="cuda").bfloat16()
    w = torch.randn(64, 3, 3, 5, 7, device="cuda").bfloat16()
    partial = torch.empty(torch.cuda.get_device_properties(0).multi_processor_count * 64 * 368, device="cuda")
    dw = torch.full((64, 3, 3, 5, 7), float("nan"), device="cuda")
    if "--once" in sys.argv:
        for dist in map(int, sys.argv[sys.argv.index("--once") + 1].split(",")):
            ext.wgrad(x, dy, partial, dw, dist, 0)
        torch.cuda.synchronize()
        return
    ref = torch.nn.grad.conv3d_weight(x.double(), w.shape, dy.double())
    checked = {}
    for dist in DISTS:
        dw.fill_(float("nan"))
        ext.wgrad(x, dy, partial, dw, dist, 0)
        torch.cuda.synchronize()
        checked[dist] = (relative_error(dw, ref), bool(torch.isfinite(dw).all()))
        if not (checked[dist][1] and checked[dist][0] <= 1e-2):  # where it goes wrong: by tap along w, by kh
            diff = (dw.double() - ref).nan_to_num(1e9).abs()
            scale = ref.abs().mean().item()
            print(f"WRONG (dist {dist}): by kw", [round(diff[..., k].mean().item() / scale, 3) for k in range(7)],
                  "by kh", [round(diff[:, :, :, k].mean().item() / scale, 3) for k in range(5)], flush=True)
    err = max(e for e, _ in checked.values())
    ok = all(f for _, f in checked.values()) and err <= 1e-2
    torch_wgrad = lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], False,  # noqa: E731
                                                             [0, 0, 0], 1, [False, True, False])
    torch_err = relative_error(torch_wgrad()[1].double(), ref)
    torch_ms = median_ms(torch_wgrad)
    good = {dist for dist, (e, finite) in checked.items() if finite and e <= 1e-2}  # only these are timed
    times = {(dist, parts): median_ms(lambda: ext.wgrad(x, dy, partial, dw, dist, parts)) if dist in good else float("nan")
             for dist in DISTS for parts in ((0, 1, 2, 3) if dist < 10 else PARTS_OF.get(dist, (0, 2)))}
    props = torch.cuda.get_device_properties(0)
    lines = [f"## seed-a bf16 wgrad as wgmma products per grad_out row: {props.name}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| kernel | ms | x torch | / floor | rel err |", "|---|---|---|---|---|",
             f"| torch (convolution_backward, weight only) | {torch_ms:.3f} | 1.00x | {torch_ms / FLOOR_MS:.1f}x | {torch_err:.1e} |",
             *[f"| probe, {KIND[dist]}{PARTS[parts]} | {ms:.3f} | {torch_ms / ms:.2f}x | {ms / FLOOR_MS:.2f}x | "
               + (f"{checked[dist][0]:.1e}{'' if checked[dist][1] else ' (NaN left)'} |" if not parts else "unchecked |")
               for (dist, parts), ms in times.items()], "",
             f"Floor {FLOOR_MS} ms and the shipped pick's {SHIPPED_MS} ms are RESULTS' backward v8 figures (another process)."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "s13_wgrad_wgmma.md").write_text(text)
    (out / "s13_wgrad_wgmma.json").write_text(json.dumps(dict(times={f"dist {d} parts {p}": v for (d, p), v in times.items()},
                                                              err=err, ok=ok, torch_ms=torch_ms, torch_err=torch_err), indent=1))


if __name__ == "__main__":
    main()
