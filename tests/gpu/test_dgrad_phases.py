"""The phase split of the gradient of the input on the GPU: conv3d and Conv3d at stride > 1
(and stride 1 with uneven padding) against float64 torch at the dtype's tolerance, with every
allocation poisoned (NaN shows an element no phase wrote); strict mode; the timing contest
with torch and its kept record; CUDA graph capture; mode 'off'."""
import time

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import Conv3d, FallbackError, conv3d, strict
from conv3d_codegen.autotune import TORCH, Tuner, keep
from conv3d_codegen.backward import input_grad
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dgrad_phases import LABEL, OP, PhaseSplit, phase_sources, phases_plan
from conv3d_codegen.dispatch import Dispatcher, source_for
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_backward import poisoned_allocations

STRIDED = WORKLOADS["strided"]  # 5x3x3, 32 -> 64, stride 2, padding 1, on 8 x 32 x 32 x 64 x 64
CASES = [
    (STRIDED.spec, (1, *STRIDED.input_shape[1:])),
    (STRIDED.spec.model_copy(update={"dtype": "bfloat16"}), (1, *STRIDED.input_shape[1:])),
    (ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --stride 2 --padding 1"), (2, 4, 17, 9, 33)),
    (ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --stride 2 --padding 1 --dtype bfloat16"), (2, 4, 17, 9, 33)),
    (ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --stride 3 --padding 1"), (2, 4, 17, 19, 40)),
    (ConvSpec.from_text("3x5x7 --cin 4 --cout 6 --stride 1x2x3 --padding 2x1x0 --dilation 2"), (2, 4, 11, 12, 45)),
    (ConvSpec.from_text("1x1x1 --cin 8 --cout 4 --stride 2 --no-bias"), (2, 8, 9, 10, 19)),  # zero phases
    (ConvSpec.from_text("1x3x3 --cin 4 --cout 8 --stride 2 --padding 0x3x2"), (2, 4, 5, 12, 21)),  # crops
    (ConvSpec.from_text("3x3x3 --cin 8 --cout 8 --stride 2 --padding 1 --groups 2"), (2, 8, 9, 10, 21)),
    (ConvSpec.from_text("2x2x2 --cin 4 --cout 8 --padding same"), (2, 4, 9, 10, 21)),  # stride 1, uneven
]
IDS = [f"{spec.tag}-{'x'.join(map(str, shape))}" for spec, shape in CASES]


def grad_out_shape(spec: ConvSpec, input_shape) -> tuple[int, ...]:
    return (input_shape[0], spec.out_channels, *spec.output_size(*input_shape[2:]))


@pytest.fixture(scope="module")
def phase_kernels(dispatcher):
    """Every phase convolution of the cases, and their forward convolutions, built in parallel up front."""
    started = time.perf_counter()
    sources = [s for spec, shape in CASES for s in [source_for(spec, shape)[0], *phase_sources(spec, shape)]]
    results = dispatcher.loader.load_many(sources, Target.for_device())
    failures = {s.name: r for s, r in zip(sources, results) if isinstance(r, Exception)}
    assert not failures, failures
    print(f"\nphase kernels: {len(sources)} in {time.perf_counter() - started:.1f} s")
    return dispatcher


def reference_input_grad(spec: ConvSpec, x, weight, bias, grad_out) -> torch.Tensor:
    x64 = x.double().requires_grad_()
    out = F.conv3d(x64, weight.double(), None if bias is None else bias.double(), **spec.functional_args())
    out.backward(grad_out.double())
    return x64.grad


@pytest.mark.parametrize("spec,shape", CASES, ids=IDS)
def test_conv3d_input_grad_matches_float64(phase_kernels, spec, shape):
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn(grad_out_shape(spec, shape), dtype=x.dtype, device="cuda")
    x = x.requires_grad_()
    with poisoned_allocations(), strict():  # every phase convolution runs its generated kernel
        out = conv3d(x, weight, bias, **spec.functional_args())
        out.backward(grad_out)
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype and x.grad.is_contiguous()
    err = relative_error(x.grad, reference_input_grad(spec, x.detach(), weight, bias, grad_out))
    assert err <= tolerance(spec), f"relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten)"
    plan = phases_plan(phase_kernels, spec, grad_out, weight, shape)
    assert not plan.torch and sum(p.spec is not None for p in plan.phases) >= 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv3d_module_at_stride_2_gives_torchs_gradients(phase_kernels, dtype):
    torch.manual_seed(0)
    spec = STRIDED.spec.model_copy(update={"dtype": dtype})
    theirs = torch.nn.Conv3d(32, 64, (5, 3, 3), stride=2, padding=1).cuda().to(spec.torch_dtype)
    ours = Conv3d(32, 64, (5, 3, 3), stride=2, padding=1).cuda().to(spec.torch_dtype)
    ours.load_state_dict(theirs.state_dict())
    ours.requires_grad_(False)  # the gradient of the input alone: no wgrad in this test
    x = torch.randn(1, 32, 32, 64, 64, device="cuda", dtype=spec.torch_dtype, requires_grad=True)
    grad = torch.randn(1, 64, *spec.output_size(32, 64, 64), device="cuda", dtype=spec.torch_dtype)
    ours(x).backward(grad)
    x64 = x.detach().double().requires_grad_()
    theirs.double()(x64).backward(grad.double())
    err = relative_error(x.grad, x64.grad)
    assert err <= tolerance(spec), f"grad of the input: relative error {err:.2e} over {tolerance(spec):.0e}"


def test_strict_mode_raises_no_fallback_at_stride_2(phase_kernels):
    spec, shape = CASES[2]
    x, weight, bias = random_inputs(spec, shape)
    x.requires_grad_()
    with strict():
        out = conv3d(x, weight, bias, stride=2, padding=1)
        out.backward(torch.randn_like(out))  # raises FallbackError if any phase (or the whole) fell back
    assert torch.isfinite(x.grad).all()


def test_phase_split_is_deterministic(phase_kernels):
    spec, shape = CASES[0]
    x, weight, _ = random_inputs(spec, shape)
    grad_out = torch.randn(grad_out_shape(spec, shape), device="cuda")
    first = input_grad(phase_kernels, spec, grad_out, weight, shape)
    assert all(torch.equal(first, input_grad(phase_kernels, spec, grad_out, weight, shape)) for _ in range(2))


# ---- against torch: the timing contest and its record -----------------------------------------

TUNED = ConvSpec.from_text("1x1x3 --cin 1 --cout 4 --stride 1x1x2 --padding 0x0x1")  # 2 phases, few candidates
TUNED_SHAPE = (2, 1, 4, 6, 70)


def record_of(dispatcher: Dispatcher, spec: ConvSpec, shape):
    return dispatcher.cache.read_record(*Tuner.record_id(spec, shape, Target.for_device(),
                                                         torch.cuda.get_device_name(), op=OP))


def test_autotuning_times_the_split_against_torch_and_keeps_the_winner(tmp_path):
    x, weight, _ = random_inputs(TUNED, TUNED_SHAPE)
    grad_out = torch.randn(grad_out_shape(TUNED, TUNED_SHAPE), device="cuda")
    want = reference_input_grad(TUNED, x, weight, None, grad_out)
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    got = input_grad(tuning, TUNED, grad_out, weight, TUNED_SHAPE)
    assert relative_error(got, want) <= tolerance(TUNED)
    record = record_of(tuning, TUNED, TUNED_SHAPE)
    assert record is not None and record["winner"] in (TORCH, LABEL) and set(record["timings_ms"]) == {TORCH, LABEL}
    plan = phases_plan(tuning, TUNED, grad_out, weight, TUNED_SHAPE)
    assert plan.tuned and plan.torch == (record["winner"] == TORCH)
    # A new process (here: a new dispatcher over the same cache) reads the winner and builds nothing.
    again = Dispatcher(KernelCache(tmp_path), autotune=True)
    builds = again.cache.stats.builds
    reused = phases_plan(again, TUNED, grad_out, weight, TUNED_SHAPE)
    assert reused.tuned and reused.torch == plan.torch
    assert relative_error(input_grad(again, TUNED, grad_out, weight, TUNED_SHAPE), want) <= tolerance(TUNED)
    assert again.cache.stats.builds == builds


@pytest.mark.parametrize("winner", [None, PhaseSplit(2)], ids=["torch", "phases"])
def test_a_kept_winner_is_used_and_torch_by_timing_is_no_fallback(tmp_path, winner):
    x, weight, _ = random_inputs(TUNED, TUNED_SHAPE)
    grad_out = torch.randn(grad_out_shape(TUNED, TUNED_SHAPE), device="cuda")
    dispatcher = Dispatcher(KernelCache(tmp_path))  # a kept record is read with autotuning off too
    record_id = Tuner.record_id(TUNED, TUNED_SHAPE, Target.for_device(), torch.cuda.get_device_name(), op=OP)
    keep(dispatcher.cache, record_id, TUNED, x, winner, {TORCH: 1.0, LABEL: 0.5 if winner else 2.0}, {},
         time.perf_counter(), op=OP)
    with strict():
        got = input_grad(dispatcher, TUNED, grad_out, weight, TUNED_SHAPE)
    assert relative_error(got, reference_input_grad(TUNED, x, weight, None, grad_out)) <= tolerance(TUNED)
    plan = phases_plan(dispatcher, TUNED, grad_out, weight, TUNED_SHAPE)
    assert plan.tuned and plan.torch == (winner is None)


def test_during_capture_nothing_is_built_or_timed(tmp_path):
    x, weight, _ = random_inputs(TUNED, TUNED_SHAPE)
    grad_out = torch.randn(grad_out_shape(TUNED, TUNED_SHAPE), device="cuda")
    fresh = Dispatcher(KernelCache(tmp_path), autotune=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan = phases_plan(fresh, TUNED, grad_out, weight, TUNED_SHAPE)
        grad_out.mul(2)
    assert plan.provisional and not plan.torch and fresh.cache.stats.builds == 0
    assert record_of(fresh, TUNED, TUNED_SHAPE) is None


def test_mode_off_runs_torch_and_strict_mode_refuses_it(tmp_path):
    spec, shape = CASES[2]
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn(grad_out_shape(spec, shape), device="cuda")
    off = Dispatcher(KernelCache(tmp_path), mode="off")
    got = input_grad(off, spec, grad_out, weight, shape)
    assert relative_error(got, reference_input_grad(spec, x, weight, bias, grad_out)) <= tolerance(spec)
    with strict(), pytest.raises(FallbackError, match="mode 'off'"):
        input_grad(off, spec, grad_out, weight, shape)
