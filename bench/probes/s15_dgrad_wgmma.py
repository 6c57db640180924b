"""Session 15 probe: seed-a's input gradient (dgrad) in bf16 as wgmma products per grad_out row, the
accumulators' columns rotating over the output rows (s15_dgrad_wgmma.cu), against torch's input gradient
(convolution_backward) in the same process.

    PYTHONPATH=. python3 bench/probes/s15_dgrad_wgmma.py OUT_DIR [--once NBUF]

A diagnostic, not a kernel of the package: it asks whether this shape of kernel brings seed-a's bf16
dgrad within the backward issue's 2x of its floor (0.35 ms; the shipped pick ran 1.19 ms in RESULTS'
backward v8) before a template is written for it. The gradient of fresh random inputs (dx poisoned with
NaN first) is checked against float64 torch over the whole batch, then timed like every row of
RESULTS.md (measure.median_ms: CUDA events, median, L2 flushed), with torch's, the weight list's
gather included; with parts left out (a runtime flag; unchecked): the write-out, the input rows'
staging. A variant that is wrong is reported and not timed. Needs sm_90a (the H100)."""
import json
import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.measure import median_ms, relative_error  # noqa: E402

HERE = Path(__file__).resolve().parent
FLOOR_MS = 0.17    # RESULTS backward v8: seed-a bf16 dgrad's floor
SHIPPED_MS = 1.19  # RESULTS backward v8: the shipped dgrad pick (staged th=8 tw=64 mt=4 block_co=3 ck=16)
# 2, 3: run 1's kernel with 2 or 3 stages (rows staged NBUF - 1 ahead, both warpgroups in step); 12: run 2, the
# warpgroups apart (each stages its own planes) and the completed slot stored raw and summed along kw; 22, 23: run 3,
# run 2's write-out with run 1's shared staging, 2 or 3 stages; 32: run 4, run 3 with the staging through registers;
# 42: run 5, run 4's staging 2 rows ahead into 3 stages, the warpgroups free to drift a row apart (mbarriers); 43: run 6,
# run 5 with each 4-row chunk prefetched into L2 8 rows ahead (one bulk prefetch of 464 bytes a channel)
NBUFS = (42, 43)
KIND = {2: "run 1, 2 stages", 3: "run 1, 3 stages", 12: "run 2, warpgroups apart, raw write-out",
        22: "run 3, shared staging, raw write-out, 2 stages", 23: "run 3, shared staging, raw write-out, 3 stages",
        32: "run 4, run 3 staged through registers", 42: "run 5, staged through registers, warpgroups apart (mbarriers)",
        43: "run 6, run 5 with 4-row chunks prefetched into L2"}
PARTS_OF = {42: (0, 2, 4), 43: (0, 4)}  # the parts timed for a kernel, where not (0, 1, 2)
PARTS = {0: "", 1: ", without the write-out", 2: ", without the staging (A from stale rows)",
         4: ", every row from rows 0-3 of its plane (L2 hits)"}
KD, KH, KW, SLOT, LIST = 3, 5, 7, 21, 196


def weight_list_index() -> torch.Tensor:
    """Indices into the flipped weight (3, 64, 3, 5, 7), flattened, of the kernel's B lists: for tap kd, k16 step
    c, channel octet o, list row i and channel k, the value w'[co][16 c + 8 o + k][kd][kh][kw] with
    (kw, co) = divmod(i % 21, 3) and kh = -(i // 21) mod 5 (s15_dgrad_wgmma.cu's header)."""
    kd, c, o, i, k = torch.meshgrid(torch.arange(KD), torch.arange(4), torch.arange(2), torch.arange(LIST),
                                    torch.arange(8), indexing="ij")
    ci, kw, co, kh = 16 * c + 8 * o + k, (i % SLOT) // 3, (i % SLOT) % 3, (-(i // SLOT)) % KH
    return ((((co * 64 + ci) * KD + kd) * KH + kh) * KW + kw).flatten()


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ext = load_inline("s15_dgrad_wgmma", cpp_sources="void dgrad(torch::Tensor x, torch::Tensor wlist, torch::Tensor y, "
                      "int64_t nbuf, int64_t parts);", cuda_sources=(HERE / "s15_dgrad_wgmma.cu").read_text(),
                      functions=["dgrad"], extra_cuda_cflags=["-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
                                                              "-lineinfo"])
    torch.manual_seed(15)
    dy = torch.randn(16, 64, 62, 60, 58, device="cuda").bfloat16()
    w = torch.randn(64, 3, 3, 5, 7, device="cuda").bfloat16()
    index = weight_list_index().cuda()
    dx = torch.full((16, 3, 64, 64, 64), float("nan"), device="cuda", dtype=torch.bfloat16)

    def ours(nbuf: int, parts: int = 0) -> None:
        wlist = w.transpose(0, 1).flip(2, 3, 4).reshape(-1)[index]  # the flipped weight's lists, per call
        ext.dgrad(dy, wlist, dx, nbuf, parts)

    if "--once" in sys.argv:
        for nbuf in map(int, sys.argv[sys.argv.index("--once") + 1].split(",")):
            ours(nbuf)
        torch.cuda.synchronize()
        return
    ref = torch.nn.grad.conv3d_input(dx.shape, w.double(), dy.double())
    checked = {}
    for nbuf in NBUFS:
        dx.fill_(float("nan"))
        ours(nbuf)
        torch.cuda.synchronize()
        checked[nbuf] = (relative_error(dx, ref), bool(torch.isfinite(dx).all()))
        if not (checked[nbuf][1] and checked[nbuf][0] <= 1e-2):  # where it goes wrong: by channel, row, position
            diff = (dx.double() - ref).nan_to_num(1e9).abs()
            scale = ref.abs().mean().item()
            print(f"WRONG (nbuf {nbuf}): err {checked[nbuf][0]:.2e}, NaN {int(dx.isnan().sum())}; by co",
                  [round(diff[:, k].mean().item() / scale, 3) for k in range(3)],
                  "by h mod 5", [round(diff[:, :, :, k::5].mean().item() / scale, 3) for k in range(5)],
                  "by w (0, 1, 6, 57, 63)", [round(diff[..., k].mean().item() / scale, 3) for k in (0, 1, 6, 57, 63)],
                  "by d (0, 1, 2, 63)", [round(diff[:, :, k].mean().item() / scale, 3) for k in (0, 1, 2, 63)], flush=True)
    err = max(e for e, _ in checked.values())
    ok = all(f for _, f in checked.values()) and err <= 1e-2
    torch_dgrad = lambda: torch.ops.aten.convolution_backward(dy, dx, w, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], False,  # noqa: E731
                                                             [0, 0, 0], 1, [True, False, False])
    torch_err = relative_error(torch_dgrad()[0].double(), ref)
    torch_ms = median_ms(torch_dgrad)
    good = {nbuf for nbuf, (e, finite) in checked.items() if finite and e <= 1e-2}  # only these are timed
    times = {(nbuf, parts): median_ms(lambda: ours(nbuf, parts)) if nbuf in good else float("nan")
             for nbuf in NBUFS for parts in PARTS_OF.get(nbuf, (0, 1, 2))}
    props = torch.cuda.get_device_properties(0)
    lines = [f"## seed-a bf16 dgrad as wgmma products per grad_out row, rotating slots: {props.name}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| kernel | ms | x torch | / floor | rel err |", "|---|---|---|---|---|",
             f"| torch (convolution_backward, input only) | {torch_ms:.3f} | 1.00x | {torch_ms / FLOOR_MS:.1f}x | {torch_err:.1e} |",
             *[f"| probe, {KIND[nbuf]}{PARTS[parts]} | {ms:.3f} | {torch_ms / ms:.2f}x | {ms / FLOOR_MS:.2f}x | "
               + (f"{checked[nbuf][0]:.1e}{'' if checked[nbuf][1] else ' (NaN left)'} |" if not parts else "unchecked |")
               for (nbuf, parts), ms in times.items()], "",
             f"Floor {FLOOR_MS} ms and the shipped pick's {SHIPPED_MS} ms are RESULTS' backward v8 figures (another process)."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "s15_dgrad_wgmma.md").write_text(text)
    (out / "s15_dgrad_wgmma.json").write_text(json.dumps(dict(times={f"nbuf {b} parts {p}": v for (b, p), v in times.items()},
                                                              err=err, ok=ok, torch_ms=torch_ms, torch_err=torch_err), indent=1))


if __name__ == "__main__":
    main()
