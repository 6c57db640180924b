"""Why the 3xTF32 wgrad sums each item apart: its seed picks' error with and without it.

    PYTHONPATH=. python3 bench/try_wgrad_x3_sums.py

For seed-a and seed-b in float32 'ieee' (full batch of 16), the first wgrad_mma candidate as
rendered, and the same source with every MMA summing straight into the block's accumulators
(thousands of MMAs into one sum, each rounded toward zero by the tensor cores): relative error
of the weight's and the bias's gradients against float64 torch. Prints one line per kernel.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conv3d_codegen.backward import WgradPlan, _run_wgrad, torch_grads  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.kernel import KernelLoader  # noqa: E402
from conv3d_codegen.measure import relative_error  # noqa: E402
from conv3d_codegen.render_wgrad_mma import render_wgrad_mma, wgrad_mma_candidates  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402


def one_sum_a_block(source):
    """The source with the per-item sums removed: `sum` is the block's accumulators."""
    body = source.body.replace("float sum[MT][NT][4] = {};", "auto& sum = acc;").replace(
        "for (int q = 0; q < 4; ++q) acc[mt][nt][q] += sum[mt][nt][q];", "for (int q = 0; q < 4; ++q) {}")
    assert body != source.body, "the template no longer has the per-item sums this script removes"
    return source.edited("one_sum", body)


def main() -> None:
    loader = KernelLoader(KernelCache(Path(tempfile.mkdtemp(prefix="conv3d-x3-sums-"))))
    for name in ("seed-b", "seed-a"):
        work = WORKLOADS[name].with_dtype("float32", "ieee")
        spec = work.spec
        tiles = wgrad_mma_candidates(spec, work.output_shape[-1])[0]
        source = render_wgrad_mma(spec, tiles)
        kernels = loader.load_many([source, one_sum_a_block(source)], Target.for_device())
        torch.manual_seed(0)
        x = torch.randn(work.input_shape, device="cuda")
        grad_out = torch.randn(work.output_shape, device="cuda")
        _, want_w, want_b = torch_grads(spec, grad_out.double(), x.double(), x.new_empty(spec.weight_shape).double(),
                                        (False, True, True))
        for label, kernel in zip(("per-item sums", "one sum a block"), kernels):
            if isinstance(kernel, Exception):
                raise kernel
            grad_w, grad_b = _run_wgrad(WgradPlan(kernel, None, tiles), spec, grad_out, x, True)
            print(f"{name} batch {x.shape[0]} {tiles}: {label}: weight {relative_error(grad_w, want_w):.2e} "
                  f"bias {relative_error(grad_b, want_b):.2e}", flush=True)
        del x, grad_out, want_w, want_b
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
