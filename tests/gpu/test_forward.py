"""Generated forward kernels against torch.nn.functional.conv3d in float64, on fresh random
inputs, with outputs poisoned (NaN) before each run so an unwritten element shows."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import Conv3d, strict
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render import render_generic
from conv3d_codegen.spec import ConvSpec

from .matrix import CASES, Case, pick

REPO = Path(__file__).resolve().parents[2]
CHECKED_BATCH = 2  # the seed workloads are compared on their first samples: float64 is slow


def reference(x, weight, bias, spec: ConvSpec) -> torch.Tensor:
    x = x[:CHECKED_BATCH]
    return F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **spec.functional_args())


def poisoned_output(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                      dtype=x.dtype, device=x.device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, spec: ConvSpec):
    err = relative_error(out[:CHECKED_BATCH], ref)
    assert err <= tolerance(spec), f"relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten output)"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_generated_kernel_matches_torch(dispatcher, case: Case):
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    with strict():
        plan = dispatcher.plan(x, weight, bias, spec.stride, spec.padding, spec.dilation, spec.groups)
    assert plan.route == "generated" and plan.spec == spec
    out = plan.kernel(x, weight, bias, poisoned_output(spec, x), launch_args(spec, x.shape))
    assert_close(out, reference(x, weight, bias, spec), spec)


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith(("base-3x5x7", "pad2x1x0", "padsame"))],
                         ids=str)
def test_generic_kernel_matches_torch(dispatcher, case: Case):
    spec = case.spec
    kernel = dispatcher.loader.load(render_generic(spec.dtype), Target.for_device())
    x, weight, bias = random_inputs(spec, case.input_shape)
    out = kernel(x, weight, bias, poisoned_output(spec, x), launch_args(spec, x.shape))
    assert_close(out, reference(x, weight, bias, spec), spec)


def test_specs_past_the_direct_template_run_on_the_generic_kernel(dispatcher):
    spec = ConvSpec(in_channels=2, out_channels=4, kernel_size=(9, 9, 5), padding=4)
    x, weight, bias = random_inputs(spec, (2, 2, 11, 12, 13))
    out = run(dispatcher, x, weight, bias, padding=4)
    assert dispatcher.plan(x, weight, bias, 1, 4, 1, 1).route == "generic"
    assert_close(out, reference(x, weight, bias, spec), spec)
    narrow = random_inputs(spec, (1, 2, 11, 12, 3))  # output width 3 < the 4 a thread computes
    assert_close(run(dispatcher, *narrow, padding=4), reference(*narrow, spec), spec)


LAYOUT_CASES = [c for c in CASES if c.name.startswith(("base-3x3x3", "stride1x2x3", "padsame", "depthwise"))]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_non_contiguous_and_unbatched_inputs(dispatcher, case: Case):
    spec = case.spec
    n, c, d, h, w = case.input_shape
    x, weight, bias = random_inputs(spec, (n, c, d, h, 2 * w))
    strided = x[..., ::2]
    assert not strided.is_contiguous()
    with strict():
        out = run(dispatcher, strided, weight, bias, **spec.functional_args())
        single = run(dispatcher, strided[0], weight, bias, **spec.functional_args())
    assert_close(out, reference(strided, weight, bias, spec), spec)
    assert single.shape == out.shape[1:]
    assert_close(single[None], reference(strided[:1], weight, bias, spec), spec)


def test_conv3d_module_matches_nn_conv3d(dispatcher, monkeypatch):
    monkeypatch.setattr("conv3d_codegen.ops.default_dispatcher", lambda: dispatcher)
    theirs = torch.nn.Conv3d(4, 8, (3, 5, 7), padding=(1, 2, 3), groups=2).cuda()
    ours = Conv3d(4, 8, (3, 5, 7), padding=(1, 2, 3), groups=2).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, 17, 9, 33, device="cuda")
    with strict():
        out = ours(x)
    ref = theirs.double()(x.double())
    assert relative_error(out, ref) <= 1e-5


GRADIENT_CASES = [pick("base-3x3x3", "float32"), pick("padsame", "float32"), pick("stride1x2x3", "float32"),
                  pick("groups2", "float32"), pick("base-3x5x7", "bfloat16")]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=str)
def test_gradients_match_torch(dispatcher, case: Case):
    spec = case.spec
    x, weight, bias = (t.requires_grad_() for t in random_inputs(spec, case.input_shape))
    with strict():
        out = run(dispatcher, x, weight, bias, **spec.functional_args())
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    F.conv3d(*ref_inputs, **spec.functional_args()).backward(grad.double())
    for ours, ref in zip((x.grad, weight.grad, bias.grad), ref_inputs):
        assert relative_error(ours, ref.grad) <= tolerance(spec)


def test_asymmetric_same_padding_gradients(dispatcher):
    spec = ConvSpec(in_channels=3, out_channels=4, kernel_size=(2, 4, 3), dilation=(1, 3, 2), padding="same")
    x, weight, bias = (t.requires_grad_() for t in random_inputs(spec, (2, 3, 9, 10, 11)))
    out = run(dispatcher, x, weight, bias, **spec.functional_args())
    out.backward(torch.ones_like(out))
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    F.conv3d(*ref_inputs, **spec.functional_args()).backward(torch.ones_like(out).double())
    for ours, ref in zip((x.grad, weight.grad, bias.grad), ref_inputs):
        assert relative_error(ours, ref.grad) <= 1e-5


def test_launches_on_the_current_stream(dispatcher):
    case = pick("base-3x3x3", "float32")
    x, weight, bias = random_inputs(case.spec, case.input_shape)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), strict():
        out = run(dispatcher, x, weight, bias)
    side.synchronize()
    assert_close(out, reference(x, weight, bias, case.spec), case.spec)


def test_a_fresh_process_loads_from_disk_without_building(dispatcher, cache_root):
    code = f"""
import torch
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs
from conv3d_codegen.ops import run
from conv3d_codegen.workloads import WORKLOADS
dispatcher = Dispatcher(KernelCache({str(cache_root)!r}))
spec = WORKLOADS["seed-b"].spec
run(dispatcher, *random_inputs(spec, (1, 3, 16, 16, 16)))
print(dispatcher.cache.stats.builds, dispatcher.cache.stats.disk_hits)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]


def test_a_second_dispatcher_over_the_same_cache_builds_nothing(cache_root):
    again = Dispatcher(KernelCache(cache_root))
    result = again.prebuild(case.spec for case in CASES[:6])
    assert all(not isinstance(k, Exception) for k in result.values())
    assert again.cache.stats.builds == 0 and again.cache.stats.disk_hits == 6
