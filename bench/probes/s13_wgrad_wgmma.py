"""Session 13 probe: seed-a's weight gradient in bf16 as wgmma products per grad_out row
(s13_wgrad_wgmma.cu: grad_out rows as A in registers, the forward probe's Hankel blocks of the input
rows as B, two warpgroups splitting N, per-block partial sums added in a fixed order), against
torch's weight gradient (convolution_backward) in the same process.

    PYTHONPATH=. python3 bench/probes/s13_wgrad_wgmma.py OUT_DIR

A diagnostic, not a kernel of the package: it asks whether this shape of kernel brings seed-a's bf16
wgrad within the backward issue's 2x of its floor (0.35 ms; the shipped tensor-core wgrad's pick ran
0.67 ms in RESULTS' backward v8) before a template is written for it. The gradient of fresh random
inputs (dW poisoned with NaN first) is checked against float64 torch over the whole batch, then timed
like every row of RESULTS.md (measure.median_ms: CUDA events, median, L2 flushed), with torch's, and
with the Hankel stores left out (a runtime flag; unchecked). Needs sm_90a (the H100)."""
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


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ext = load_inline("s13_wgrad_wgmma", cpp_sources="void wgrad(torch::Tensor x, torch::Tensor dy, torch::Tensor partial, "
                      "torch::Tensor dw, int64_t parts);", cuda_sources=(HERE / "s13_wgrad_wgmma.cu").read_text(),
                      functions=["wgrad"], extra_cuda_cflags=["-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a"])
    torch.manual_seed(13)
    x = torch.randn(16, 3, 64, 64, 64, device="cuda").bfloat16()
    dy = torch.randn(16, 64, 62, 60, 58, device="cuda").bfloat16()
    w = torch.randn(64, 3, 3, 5, 7, device="cuda").bfloat16()
    partial = torch.empty(torch.cuda.get_device_properties(0).multi_processor_count * 64 * 368, device="cuda")
    dw = torch.full((64, 3, 3, 5, 7), float("nan"), device="cuda")
    ext.wgrad(x, dy, partial, dw, 0)
    torch.cuda.synchronize()
    ref = torch.nn.grad.conv3d_weight(x.double(), w.shape, dy.double())
    err = relative_error(dw, ref)
    ok = bool(torch.isfinite(dw).all()) and err <= 1e-2
    if not ok:  # where it goes wrong: error by tap along w, and by the two warpgroups' rows (kh 0-2 and 2-4)
        diff = (dw.double() - ref).nan_to_num(1e9).abs()
        scale = ref.abs().mean().item()
        print("WRONG: by kw", [round(diff[..., k].mean().item() / scale, 3) for k in range(7)],
              "by kh", [round(diff[:, :, :, k].mean().item() / scale, 3) for k in range(5)], flush=True)
    torch_wgrad = lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], False,  # noqa: E731
                                                             [0, 0, 0], 1, [False, True, False])
    torch_err = relative_error(torch_wgrad()[1].double(), ref)
    torch_ms = median_ms(torch_wgrad)
    ms = median_ms(lambda: ext.wgrad(x, dy, partial, dw, 0)) if ok else float("nan")
    no_stores = median_ms(lambda: ext.wgrad(x, dy, partial, dw, 1)) if ok else float("nan")
    props = torch.cuda.get_device_properties(0)
    lines = [f"## seed-a bf16 wgrad as wgmma products per grad_out row: {props.name}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| kernel | ms | x torch | / floor | rel err |", "|---|---|---|---|---|",
             f"| torch (convolution_backward, weight only) | {torch_ms:.3f} | 1.00x | {torch_ms / FLOOR_MS:.1f}x | {torch_err:.1e} |",
             f"| probe | {ms:.3f} | {torch_ms / ms:.2f}x | {ms / FLOOR_MS:.2f}x | {err:.1e}{'' if ok else ' (WRONG or NaN)'} |",
             f"| probe without the Hankel stores (unchecked) | {no_stores:.3f} | | | |", "",
             f"Floor {FLOOR_MS} ms and the shipped pick's {SHIPPED_MS} ms are RESULTS' backward v8 figures (another process)."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "s13_wgrad_wgmma.md").write_text(text)
    (out / "s13_wgrad_wgmma.json").write_text(json.dumps(dict(ms=ms, err=err, ok=ok, torch_ms=torch_ms, torch_err=torch_err,
                                                              no_stores_ms=no_stores), indent=1))


if __name__ == "__main__":
    main()
