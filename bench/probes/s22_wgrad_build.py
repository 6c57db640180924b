"""Session 22 probe: where seed-a's wgmma wgrad kernel (bf16) spends its rows, and the kernel with its Hankel blocks
built by warps of their own. Built on s21_wgrad_wgmma.py (its edge shapes, references and diagnostics).

    PYTHONPATH=. python3 bench/probes/s22_wgrad_build.py OUT_DIR [--ncu] [--only NAME,NAME]

Correctness: each edge shape's kernel against torch's float64 autograd (NaN-poisoned outputs and workspace), and the
seed-a kernels on 2 samples. Timing: median_ms (CUDA events, median, L2 flushed), in one process with the v21 mma pick.
With --ncu, the named kernels run once each, untimed, for Nsight Compute."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render_wgrad_mma import WgradMmaTiles, render_wgrad_mma  # noqa: E402
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma  # noqa: E402
from s21_wgrad_wgmma import (EDGES, SEED_A, add_variants, build_named, check_edge, grads64, run,  # noqa: E402
                             time_ms)

# Run 1 timed v22's kernel with s21's diagnostics (VARIANTS "nostore", "product") and without the ring's mirror
# ("nomirror"), on v22's template (git show d3c8274:templates/conv3d_wgrad_wgmma.cu.j2). Since run 2 the template has
# builder warps; its diagnostics, each computing a wrong result:
VARIANTS22 = {
    "nobuild": [("      if (p < PLANES) {\n        const bool first", "      if (false) {\n        const bool first")],
    "nomirror": [("          build_piece<0>(block, slot < KH - 1,", "          build_piece<0>(block, false,"),
                 ("          build_piece<1>(block, slot < KH - 1,", "          build_piece<1>(block, false,")],
    "nobias": [("      if constexpr (C::BIASED) wgmma_ss<8, 0>", "      if constexpr (false) wgmma_ss<8, 0>")],
    # the 4 bias products after the 4 of the window, not each after its k16 step's
    "biaslast": [("      if constexpr (C::BIASED) wgmma_ss<8, 0>(c.bacc, da, b_desc(ones + ks * 256, 128, 1024));\n    }\n",
                  "    }\n    if constexpr (C::BIASED)\n      for (int ks = 0; ks < 4; ++ks)\n"
                  "        wgmma_ss<8, 0>(c.bacc, a_desc(a + 32 * ks), b_desc(ones + ks * 256, 128, 1024));\n")],
}
# (run 3 timed "inflight2", two rows of a warpgroup in flight, a row's slot freed once the next row is issued; run 4 a
# row's wait right after its issue, kept; run 5 the next row's waits before it, reverted.)


# seed-a's configurations timed (stages, ring, raws, tight)
PROBED = [(8, 1, 8, True), (6, 1, 8, True), (4, 1, 8, False)]
DIAGNOSED = (8, 1, 8, True)
EDGE_TILES = {"": None}  # the edge shapes' tiles by name suffix (None: the template's default)


def sources_for(edges: bool, probed=PROBED, diagnosed=DIAGNOSED, variants=VARIANTS22, edge_tiles=EDGE_TILES,
                extra=None) -> dict:
    """name -> Source: the edge shapes (each in `edge_tiles`, suffix -> tiles, None: the template's default), seed-a's
    kernel in each configuration `probed`, `variants` (name -> edits of its source) of configuration `diagnosed`, the
    v21 pick. (Session 22's runs had default tiles and tight K blocks, "-tight", on v23's template, commit 1676e9f.)"""
    sources = {}
    if edges:
        for name, spec, shape in EDGES:
            for suffix, tiles in edge_tiles.items():
                sources[name + suffix] = render_wgrad_wgmma(spec, tiles, size=shape[2:])
    for config in probed:
        tiles = WgradWgmmaTiles(*config)
        sources[str(tiles)] = render_wgrad_wgmma(SEED_A.spec, tiles, size=SEED_A.input_shape[2:])
    seed = sources[str(WgradWgmmaTiles(*diagnosed))]
    add_variants(sources, seed, variants, seed.params["tiles"])
    sources["mma (v21 pick)"] = render_wgrad_mma(SEED_A.spec, WgradMmaTiles(warps_n=8, nt=6, owc=64))
    return sources | (extra() if extra else {})


def main(probed=PROBED, diagnosed=DIAGNOSED, variants=VARIANTS22, json_name="s22_wgrad_build.json",
         edge_tiles=EDGE_TILES, extra=None) -> None:
    """`extra`: None, or a function returning more seed-a sources by name (timed if named "wgmma ...")."""
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ncu = "--ncu" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    target = Target.for_device()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dispatcher = Dispatcher(KernelCache(out / "cache"))
    sources = sources_for(not ncu, probed, diagnosed, variants, edge_tiles, extra)
    if only:
        sources = {k: v for k, v in sources.items() if k in only}
    names = list(sources)
    kernels = build_named(dispatcher, sources, target)
    results = {"edges": {}, "checks": {}, "times_ms": {}}
    torch.manual_seed(22)
    for name, spec, shape in [(n + t, s, sh) for n, s, sh in EDGES for t in edge_tiles]:
        if name not in kernels:
            continue
        check_edge(kernels[name], name, spec, shape, sms, results["edges"])
    spec, shape = SEED_A.spec, SEED_A.input_shape
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    timed = [k for k in names if k in kernels and k.startswith(("wgmma", "mma"))]
    if ncu:
        for k in timed:
            workspace = torch.empty(sms * (weight.numel() + spec.out_channels), device="cuda")
            gw, gb = torch.empty_like(weight), torch.empty_like(bias)
            kernels[k](x, grad_out, gb, gw, launch_args(spec, x.shape) | {"splits": sms,
                                                                           "workspace": workspace.data_ptr()})
        torch.cuda.synchronize()
        return
    ref_w, ref_b = grads64(spec, x[:2], weight, bias, grad_out[:2])
    for k in timed:
        if set(k.split()) & set(variants):
            continue
        got_w, got_b = run(kernels[k], spec, x[:2], grad_out[:2], sms)
        torch.cuda.synchronize()
        ew, eb = relative_error(got_w, ref_w), relative_error(got_b, ref_b)
        results["checks"][k] = {"weight": ew, "bias": eb, "ok": ew <= tolerance(spec) and eb <= tolerance(spec)}
        print(f"{k}: check on 2 samples: weight {ew:.2e} bias {eb:.2e}", flush=True)
    for k in timed + [k for k in timed if k.startswith("wgmma")]:  # the configurations twice, the second time last
        ms = time_ms(kernels[k], spec, x, grad_out, weight, sms)
        results["times_ms"].setdefault(k, []).append(ms)
        print(f"{k}: {ms:.4f} ms", flush=True)
    (out / json_name).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
