"""Session 24 probe: the wgmma wgrad template in tf32 (float32 with precision 'tf32': k8 steps, B as strips) against
float64 torch on the edge shapes of s21 in float32, then seed-a's tf32 wgrad timed beside the tensor-core (mma.sync)
pick it would replace, and torch (cuDNN, tf32 allowed), in one process on the same tensors.

    PYTHONPATH=. python3 bench/probes/s24_wgrad_tf32.py OUT_DIR [round_a]

Correctness: grad_weight and grad_bias (poisoned with NaN first, the workspace too) against torch's float64
autograd, relative error under the bar (tf32: 1e-3), with 1, 7 and all SMs' splits; seed-a on 2 samples.
Timing: median_ms (CUDA events, median, L2 flushed). With round_a, grad_out is rounded to tf32 by the zeroing warp."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import conv3d_codegen.render_wgrad_wgmma as rw  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render_wgrad_mma import WgradMmaTiles, render_wgrad_mma  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402
from s21_wgrad_wgmma import EDGES, build_named, check_edge, grads64, run, time_ms  # noqa: E402

SEED_A = WORKLOADS["seed-a"].with_dtype("float32", "tf32")
TF32_EDGES = [(name, spec.model_copy(update={"dtype": "float32", "precision": "tf32"}), shape)
              for name, spec, shape in EDGES]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rw.TF32_ROUND_A = "round_a" in sys.argv[2:]
    target = Target.for_device()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dispatcher = Dispatcher(KernelCache(out / "cache"))
    sources = {}
    for name, spec, shape in TF32_EDGES:
        if rw.wgrad_wgmma_shape_problem(spec, shape) is None:
            sources[name] = rw.render_wgrad_wgmma(spec, rw.WgradWgmmaTiles(4, 1, 8, True), size=shape[2:])
    for tiles in rw.wgrad_wgmma_candidates(SEED_A.spec):
        sources[str(tiles)] = rw.render_wgrad_wgmma(SEED_A.spec, tiles, size=SEED_A.input_shape[2:])
    sources["mma (tf32 pick)"] = render_wgrad_mma(SEED_A.spec, WgradMmaTiles(warps_n=8, nt=6, owc=64))
    kernels = build_named(dispatcher, sources, target)
    results = {"round_a": rw.TF32_ROUND_A, "edges": {}, "checks": {}, "times_ms": {}}
    torch.manual_seed(24)
    for name, spec, shape in TF32_EDGES:
        if name in kernels:
            check_edge(kernels[name], name, spec, shape, sms, results["edges"])
    spec, shape = SEED_A.spec, SEED_A.input_shape
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    ref_w, ref_b = grads64(spec, x[:2], weight, bias, grad_out[:2])
    timed = [k for k in kernels if k.startswith(("wgmma", "mma"))]
    for k in timed:
        got_w, got_b = run(kernels[k], spec, x[:2], grad_out[:2], sms)
        torch.cuda.synchronize()
        ew, eb = relative_error(got_w, ref_w), relative_error(got_b, ref_b)
        results["checks"][k] = {"weight": ew, "bias": eb, "ok": ew <= tolerance(spec) and eb <= tolerance(spec)}
        print(f"{k}: check on 2 samples: weight {ew:.2e} bias {eb:.2e}", flush=True)
    # the error against the rows a block sums (tf32's tensor-core sums drop bits as they grow): seed-a's first tiles
    # on 2 samples (7,440 rows) and on all 16 (59,520), with fewer splits than the SMs
    first = next(k for k in timed if k.startswith("wgmma"))
    ref16 = grads64(spec, x, weight, bias, grad_out)
    for n, ref, splits_list in ((2, (ref_w, ref_b), (sms, 16, 4, 1)), (16, ref16, (sms, 66, 33, 16))):
        for splits in splits_list:
            got_w, got_b = run(kernels[first], spec, x[:n], grad_out[:n], splits)
            torch.cuda.synchronize()
            ew, eb = relative_error(got_w, ref[0]), relative_error(got_b, ref[1])
            rows = n * spec.output_size(*shape[2:])[0] * spec.output_size(*shape[2:])[1]
            results["checks"][f"{first} n={n} splits={splits}"] = {"rows_a_block": -(-rows // splits), "weight": ew,
                                                                    "bias": eb}
            print(f"{first}: {n} samples, {splits} splits ({-(-rows // splits)} rows a block): weight {ew:.2e} "
                  f"bias {eb:.2e}", flush=True)
    for k in timed + timed:
        ms = time_ms(kernels[k], spec, x, grad_out, weight, sms)
        results["times_ms"].setdefault(k, []).append(ms)
        print(f"{k}: {ms:.4f} ms", flush=True)
    torch.backends.cudnn.allow_tf32 = True
    xw, wt = x.detach(), weight.detach()
    ms = median_ms(lambda: torch.ops.aten.convolution_backward(
        grad_out, xw, wt, [spec.out_channels], [1, 1, 1], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1,
        [False, True, True]), reps=10)
    results["times_ms"]["torch (cuDNN, tf32)"] = [ms]
    print(f"torch (cuDNN, tf32): {ms:.4f} ms", flush=True)
    (out / "s24_wgrad_tf32.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
