"""Session 21 probe: the wgmma wgrad template (templates/conv3d_wgrad_wgmma.cu.j2) against float64 torch on small
shapes at its edges, then seed-a's wgrad in bf16 timed beside the tensor-core wgrad pick of v21 and torch, in one
process on the same tensors.

    PYTHONPATH=. python3 bench/probes/s21_wgrad_wgmma.py OUT_DIR [--ncu]

Correctness: each kernel's grad_weight and grad_bias (poisoned with NaN first, and the workspace too) against
torch's float64 autograd, relative error under the bar (bf16/fp16: 1e-2). Timing: median_ms (CUDA events, median,
L2 flushed). Diagnostics (VARIANTS) are timed beside. With --ncu, only the seed-a kernel and the mma pick run, once
each, untimed, for Nsight Compute."""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render_wgrad_mma import WgradMmaTiles, render_wgrad_mma  # noqa: E402
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma  # noqa: E402
from conv3d_codegen.spec import ConvSpec  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402

SEED_A = WORKLOADS["seed-a"].with_dtype("bfloat16")
# (name, spec, input shape), each with 4 stages: every even start (58 wide), starts 0 and 4 with padding 1 along w,
# 3x3x3 with 12 planes (6 and 6) and padding, odd starts (57 wide: 1 .. 7) with an 8-wide kernel and 24 channels in
# float16, and KH = 7
EDGES = [
    ("seed-a-2", SEED_A.spec, (2, 3, 64, 64, 64)),
    ("pad-w1", ConvSpec.from_text("3x5x7 --cin 2 --cout 16 --padding 1x2x1 --dtype bfloat16"), (2, 2, 6, 20, 48)),
    ("3x3x3-ci4", ConvSpec.from_text("3x3x3 --cin 4 --cout 64 --padding 1x1x1 --dtype bfloat16"), (2, 4, 5, 16, 32)),
    ("odd-starts", ConvSpec.from_text("2x3x8 --cin 2 --cout 24 --dtype float16 --no-bias"), (3, 2, 5, 10, 64)),
    # KH = 7 (runs 5-7: 4x7x7, N = 224; since 15-row blocks, 3x7x7, N = 168)
    ("kh7", ConvSpec.from_text("3x7x7 --cin 2 --cout 32 --padding 1x0x0 --dtype bfloat16"), (2, 2, 5, 14, 64)),
]


def edit(body: str, old: str, new: str) -> str:
    assert body.count(old) == 1, old
    return body.replace(old, new)


# Diagnostics of seed-a's kernel (stages 6), each computing a wrong result: its rendered source with a part switched off.
VARIANTS = {
    "nostore": [("    store((oh + KH) % R, v[P]);", "")],  # no Hankel block built after a range's first rows
    "nobuild": [("    store((oh + KH) % R, v[P]);", ""), ("    load(v[P], n, od, oh + KH + 2);", "")],  # nor loaded
    "nozero": [("    for (int z = lane; z < CO * OUTSIDE; z += 32) {", "    for (int z = lane; z < 0; z += 32) {")],
    "nobias": [("      if constexpr (BIASED) wgmma_ss<8, 0>", "      if constexpr (false) wgmma_ss<8, 0>")],
    # grad_out's rows: only the first STAGES copied, then the stages reused (FULL arrived at without a copy)
    "notma": [("    mbar_expect(full + 8 * s, CO * ROWB);",
               "    if (i >= STAGES) {\n      mbar_arrive(full + 8 * s);\n      continue;\n    }\n"
               "    mbar_expect(full + 8 * s, CO * ROWB);")],
}
# a refill's 5 input rows at once, not 4 then 1 (results correct). (Run 7 also timed 15-row K blocks from row 0 against
# run 6's 13 rows from row 1, by editing the template's RLO and HROWS: the 15-row form is now the only one.)
VARIANTS["batch5"] = [("constexpr int START_BATCH = 4;", "constexpr int START_BATCH = 5;")]
# the products alone (no block built after a range's first rows, nothing zeroed, grad_out not copied, no bias), then
# with B read as 1024-byte groups of 128-byte K blocks (LBO 128, SBO 1024)
VARIANTS["product"] = VARIANTS["nobuild"] + VARIANTS["nozero"] + VARIANTS["notma"] + VARIANTS["nobias"]
VARIANTS["product_lbo128"] = VARIANTS["product"] + [
    ("wgmma_ss<KH * NP * 8, 0>(acc, da, b_desc(b + ks * 2 * LBO, LBO, GB));",
     "wgmma_ss<KH * NP * 8, 0>(acc, da, b_desc(ring + ks * 256, 128, 1024));")]


def add_variants(sources: dict, seed, variants: dict, label: str) -> None:
    """sources[f"{label} {v}"]: `seed`'s source with each variant's edits (old -> new) applied."""
    for v, edits in variants.items():
        body = seed.body
        for old, new in edits:
            body = edit(body, old, new)
        sources[f"{label} {v}"] = seed.edited(v, body)


def grads64(spec, x, weight, bias, grad_out):
    x64, w64 = x.double(), weight.double().requires_grad_()
    b64 = bias.double().requires_grad_() if bias is not None else None
    F.conv3d(x64, w64, b64, **spec.functional_args()).backward(grad_out.double())
    return w64.grad, None if b64 is None else b64.grad


def run(kernel, spec, x, grad_out, splits):
    workspace = torch.full((splits * (math.prod(spec.weight_shape) + spec.out_channels),), float("nan"), device="cuda")
    grad_w = torch.full(spec.weight_shape, float("nan"), dtype=x.dtype, device="cuda")
    grad_b = torch.full((spec.out_channels,), float("nan"), dtype=x.dtype, device="cuda") if spec.bias else None
    kernel(x, grad_out, grad_b, grad_w, launch_args(spec, x.shape) | {"splits": splits, "workspace": workspace.data_ptr()})
    return grad_w, grad_b


def time_ms(kernel, spec, x, grad_out, weight, splits: int) -> float:
    """median_ms of the kernel on x and grad_out with `splits` splits (outputs and workspace allocated once)."""
    workspace = torch.empty(splits * (weight.numel() + spec.out_channels), device="cuda")
    gw = torch.empty_like(weight)
    gb = torch.empty(spec.out_channels, dtype=weight.dtype, device="cuda") if spec.bias else None
    args = launch_args(spec, x.shape) | {"splits": splits, "workspace": workspace.data_ptr()}
    return median_ms(lambda: kernel(x, grad_out, gb, gw, args), reps=50)


def build_named(dispatcher, sources: dict, target) -> dict:
    """name -> kernel for every source that builds; each failure printed."""
    built = dispatcher.loader.load_many(list(sources.values()), target)
    kernels = {}
    for k, r in zip(sources, built):
        if isinstance(r, Exception):
            print(f"BUILD {k}: {str(r)[:3000]}", flush=True)
        else:
            kernels[k] = r
    return kernels


def check_edge(kernel, name, spec, shape, sms: int, results: dict) -> None:
    """The kernel against float64 torch on fresh inputs of `shape`, with 1, 7 and `sms` splits, into results."""
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    want_w, want_b = grads64(spec, x, weight, bias, grad_out)
    for splits in (1, 7, sms):
        got_w, got_b = run(kernel, spec, x, grad_out, splits)
        torch.cuda.synchronize()
        err_w = relative_error(got_w, want_w)
        err_b = relative_error(got_b, want_b) if spec.bias else 0.0
        ok = err_w <= tolerance(spec) and err_b <= tolerance(spec)
        results[f"{name} splits={splits}"] = {"weight": err_w, "bias": err_b, "ok": ok}
        print(f"{name:12s} splits={splits:3d} weight {err_w:.2e} bias {err_b:.2e} {'ok' if ok else 'FAIL'}", flush=True)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ncu = "--ncu" in sys.argv
    target = Target.for_device()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dispatcher = Dispatcher(KernelCache(out / "cache"))
    sources = {}
    for name, spec, shape in EDGES:
        sources[name] = render_wgrad_wgmma(spec, WgradWgmmaTiles(4), size=shape[2:])
    for stages in (6, 4):
        sources[f"wgmma stages={stages}"] = render_wgrad_wgmma(SEED_A.spec, WgradWgmmaTiles(stages),
                                                               size=SEED_A.input_shape[2:])
    add_variants(sources, sources["wgmma stages=6"], VARIANTS, "wgmma")
    sources["mma (v21 pick)"] = render_wgrad_mma(SEED_A.spec, WgradMmaTiles(warps_n=8, nt=6, owc=64))
    names = list(sources)
    kernels = build_named(dispatcher, sources, target)
    results = {"edges": {}, "times_ms": {}}
    torch.manual_seed(21)
    for name, spec, shape in EDGES:
        if name not in kernels or ncu:
            continue
        check_edge(kernels[name], name, spec, shape, sms, results["edges"])
    spec, shape = SEED_A.spec, SEED_A.input_shape
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    ref_w, ref_b = grads64(spec, x[:2], weight, bias, grad_out[:2])
    timed = [k for k in names if k.startswith(("wgmma", "mma")) and k in kernels]
    for k in timed if not ncu else []:
        if k.split()[1] in VARIANTS and k.split()[1] != "batch5":
            continue
        splits = sms
        got_w, got_b = run(kernels[k], spec, x[:2], grad_out[:2], splits)
        torch.cuda.synchronize()
        print(f"{k}: check on 2 samples: weight {relative_error(got_w, ref_w):.2e} bias "
              f"{relative_error(got_b, ref_b):.2e}", flush=True)
    for k in timed if not ncu else []:
        results["times_ms"][k] = time_ms(kernels[k], spec, x, grad_out, weight, sms)
        print(f"{k}: {results['times_ms'][k]:.4f} ms", flush=True)
    xw = x.detach()
    wt = weight.detach()

    def torch_wgrad():
        return torch.ops.aten.convolution_backward(grad_out, xw, wt, [spec.out_channels], [1, 1, 1], [0, 0, 0],
                                                   [1, 1, 1], False, [0, 0, 0], 1, [False, True, True])
    if not ncu:
        results["times_ms"]["torch"] = median_ms(torch_wgrad, reps=20)
        print(f"torch: {results['times_ms']['torch']:.4f} ms", flush=True)
    else:
        for k in ("wgmma stages=6", "mma (v21 pick)"):
            workspace = torch.empty(sms * (weight.numel() + spec.out_channels), device="cuda")
            gw, gb = torch.empty_like(weight), torch.empty_like(bias)
            kernels[k](x, grad_out, gb, gw, launch_args(spec, x.shape) | {"splits": sms,
                                                                           "workspace": workspace.data_ptr()})
        torch.cuda.synchronize()
    (out / "s21_wgrad_wgmma.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
