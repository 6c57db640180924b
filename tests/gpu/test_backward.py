"""Generated gradients (dgrad, wgrad, bias) against torch's float64 autograd, over the forward
matrix, on fresh random inputs. Outputs are poisoned: with deterministic algorithms on,
torch fills every new tensor with NaN, so an element a kernel leaves unwritten shows."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import conv3d, strict
from conv3d_codegen.backward import input_grad, weight_grad
from conv3d_codegen.build import Target
from conv3d_codegen.dgrad_phases import phase_sources
from conv3d_codegen.dispatch import source_for
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.render import wide_offsets
from conv3d_codegen.render_grad import WgradTiles, dgrad_spec, render_wgrad, supports_wgrad
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .matrix import CASES, Case

GRAD_BATCH = 2  # the seed workloads run their gradients on 2 samples: float64 is slow

GRAD_CASES = [c if c.input_shape[0] <= GRAD_BATCH else Case(c.name, c.spec, (GRAD_BATCH, *c.input_shape[1:]))
              for c in CASES]
GRAD_CASES += [Case(f"{w}-float32", WORKLOADS[w].spec, (1, *WORKLOADS[w].input_shape[1:]))
               for w in ("wide", "strided", "depthwise", "pointwise")]
GRAD_CASES += [Case("long-rows-float32", ConvSpec.from_text("1x3x5 --cin 2 --cout 8 --padding 0x1x2"),
                    (2, 2, 3, 5, 300))]


@contextlib.contextmanager
def poisoned_allocations():
    """Every tensor torch allocates inside is filled with NaN (torch does this while
    deterministic algorithms are on)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def reference_grads(spec: ConvSpec, x, weight, bias, grad_out):
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    b64 = bias.double().requires_grad_() if bias is not None else None
    out = F.conv3d(x64, w64, b64, **spec.functional_args())
    out.backward(grad_out.double())
    return x64.grad, w64.grad, None if b64 is None else b64.grad


def grad_output(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    return torch.randn((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])),
                       dtype=x.dtype, device=x.device)


def assert_close(name: str, got, want, spec: ConvSpec):
    err = relative_error(got, want)
    assert err <= tolerance(spec), f"{name}: relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten)"


@pytest.fixture(scope="module")
def built(dispatcher):
    """Every dgrad and wgrad kernel of the matrix, built in parallel up front."""
    target = Target.for_device()
    sources = [render_wgrad(c.spec, wide=wide_offsets(c.spec, c.input_shape))
               for c in GRAD_CASES if supports_wgrad(c.spec) is None]
    for c in GRAD_CASES:
        dspec, _ = dgrad_spec(c.spec)
        if dspec is not None:
            out_shape = (c.input_shape[0], c.spec.out_channels, *c.spec.output_size(*c.input_shape[2:]))
            sources.append(source_for(dspec, out_shape)[0])
        else:  # split by output phase
            sources += phase_sources(c.spec, c.input_shape)
    results = dispatcher.loader.load_many(sources, target)
    failures = {s.name: r for s, r in zip(sources, results) if isinstance(r, Exception)}
    assert not failures, failures
    return dispatcher


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_generated_gradients_match_torch(built, case: Case):
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    grad_out = grad_output(spec, x)
    want_x, want_w, want_b = reference_grads(spec, x, weight, bias, grad_out)
    with poisoned_allocations(), strict():  # stride > 1: the phase split, generated too
        grad_x = input_grad(built, spec, grad_out, weight, tuple(x.shape))
    with poisoned_allocations(), strict():
        grad_w, grad_b = weight_grad(built, spec, grad_out, x, need_weight=True, need_bias=True)
    assert grad_x.shape == x.shape and grad_w.shape == weight.shape and grad_x.dtype == x.dtype
    assert_close("grad of the input", grad_x, want_x, spec)
    assert_close("grad of the weight", grad_w, want_w, spec)
    if spec.bias:
        assert grad_b.shape == bias.shape
        assert_close("grad of the bias", grad_b, want_b, spec)
    else:
        assert grad_b is None


SPEC = ConvSpec.from_text("3x5x7 --cin 4 --cout 16 --padding 1x2x0 --stride 1x1x2")


@pytest.mark.parametrize("tiles", [WgradTiles(cot=4, tc=2, rb=7, owc=8, wt=2),    # 9 row blocks of 7, the last of 4
                                   WgradTiles(cot=2, tc=8, rb=60, owc=32, wt=4),  # all rows, 16-byte reads
                                   WgradTiles(cot=1, tc=1, rb=3, owc=16, wt=8),   # one channel per block
                                   WgradTiles(cot=4, tc=4, rb=60, owc=20, wt=4),  # a chunk not a power of 2
                                   WgradTiles(cot=4, tc=2, rb=7, owc=8, wt=2, prefetch=True),
                                   WgradTiles(cot=4, tc=4, rb=60, owc=20, wt=4, prefetch=True)],
                         ids=str)
def test_wgrad_tiles_at_their_edges(dispatcher, tiles):
    assert tiles.problem(SPEC) is None
    x, weight, bias = random_inputs(SPEC, (3, 4, 9, 11, 37))  # ow = 16: two chunks of 8, one of 16 or 32
    grad_out = grad_output(SPEC, x)
    _, want_w, want_b = reference_grads(SPEC, x, weight, bias, grad_out)
    kernel = dispatcher.loader.load(render_wgrad(SPEC, tiles), Target.for_device())
    splits = 5
    workspace = torch.full((splits * (weight.numel() + SPEC.out_channels),), float("nan"), device="cuda")
    grad_w, grad_b = torch.full_like(weight, float("nan")), torch.full_like(bias, float("nan"))
    kernel(x, grad_out, grad_b, grad_w, launch_args(SPEC, x.shape) | {"splits": splits,
                                                                       "workspace": workspace.data_ptr()})
    assert_close("grad of the weight", grad_w, want_w, SPEC)
    assert_close("grad of the bias", grad_b, want_b, SPEC)


def test_wgrad_is_deterministic(built):
    spec = WORKLOADS["seed-b"].spec
    x, _, _ = random_inputs(spec, (2, 3, 32, 48, 64))
    grad_out = grad_output(spec, x)
    first = weight_grad(built, spec, grad_out, x)
    for _ in range(3):
        again = weight_grad(built, spec, grad_out, x)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("need_weight,need_bias", [(True, False), (False, True), (False, False)])
def test_only_the_gradients_asked_for(built, need_weight, need_bias):
    case = next(c for c in GRAD_CASES if c.name == "base-3x3x3-float32")
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    grad_out = grad_output(spec, x)
    _, want_w, want_b = reference_grads(spec, x, weight, bias, grad_out)
    grad_w, grad_b = weight_grad(built, spec, grad_out, x, need_weight, need_bias)
    assert (grad_w is None) != need_weight and (grad_b is None) != need_bias
    if need_weight:
        assert_close("grad of the weight", grad_w, want_w, spec)
    if need_bias:
        assert_close("grad of the bias", grad_b, want_b, spec)


def test_wgrad_autotuning_keeps_its_winner(cache_root):
    from conv3d_codegen.backward import _wgrad_plan
    from conv3d_codegen.cache import KernelCache
    from conv3d_codegen.dispatch import Dispatcher

    spec = ConvSpec.from_text("3x3x3 --cin 3 --cout 16 --padding 1")
    x, weight, bias = random_inputs(spec, (2, 3, 12, 20, 70))
    grad_out = grad_output(spec, x)
    _, want_w, want_b = reference_grads(spec, x, weight, bias, grad_out)
    tuning = Dispatcher(KernelCache(cache_root), autotune=True)
    grad_w, grad_b = weight_grad(tuning, spec, grad_out, x)
    assert_close("grad of the weight", grad_w, want_w, spec)
    assert_close("grad of the bias", grad_b, want_b, spec)
    plan = _wgrad_plan(tuning, spec, x, grad_out)
    assert plan.tuned or plan.kernel is not None
    # A new process (here: a new dispatcher over the same cache) reads the winner, builds nothing new.
    again = Dispatcher(KernelCache(cache_root), autotune=True)
    builds = again.cache.stats.builds
    assert _wgrad_plan(again, spec, x, grad_out).tiles == plan.tiles
    assert again.cache.stats.builds == builds


# ---- the whole Jacobian ---------------------------------------------------------------

JACOBIAN_CASES = [("3x3x3 --cin 2 --cout 3 --padding 1", (2, 2, 3, 4, 5)),
                  ("1x3x5 --cin 2 --cout 2 --padding 0x1x2 --dilation 1x1x2", (1, 2, 2, 4, 9)),
                  ("3x1x3 --cin 4 --cout 4 --groups 2 --padding same --no-bias", (1, 4, 4, 3, 5)),
                  ("3x3x3 --cin 2 --cout 2 --stride 2 --padding 1", (1, 2, 5, 5, 9))]


@pytest.mark.parametrize("text,shape", JACOBIAN_CASES, ids=[t for t, _ in JACOBIAN_CASES])
def test_jacobian_of_the_op_matches_float64_torch(dispatcher, text, shape):
    """What torch.autograd.gradcheck checks, in the form float32 allows: every row of the
    Jacobian that autograd gets from our ops (one backward pass per output element, the
    generated dgrad and wgrad kernels in float32) against the float64 one of F.conv3d, to the
    float32 bar. Finite differences in float32 would be noise, and there is no float64 kernel.
    The stride-2 case runs dgrad split by output phase (its input is 9 wide, so that the
    forward's output, 5 wide, is not below the 4 outputs a thread of the direct kernel takes)."""
    spec = ConvSpec.from_text(text)
    x, weight, bias = random_inputs(spec, shape)
    ours_in = [t.clone().requires_grad_() for t in (x, weight, bias) if t is not None]
    ref_in = [t.double().requires_grad_() for t in (x, weight, bias) if t is not None]
    with strict():
        out = conv3d(*ours_in[:2], ours_in[2] if spec.bias else None, **spec.functional_args())
        ref = F.conv3d(*ref_in[:2], ref_in[2] if spec.bias else None, **spec.functional_args())
        rows, ref_rows = [], []
        for k in range(out.numel()):
            onehot = torch.zeros(out.numel(), device="cuda")
            onehot[k] = 1
            rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(
                out, ours_in, onehot.view_as(out).to(out.dtype), retain_graph=True)]))
            ref_rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(
                ref, ref_in, onehot.view_as(ref).double(), retain_graph=True)]))
    jacobian, want = torch.stack(rows), torch.stack(ref_rows)
    assert jacobian.shape == (out.numel(), sum(t.numel() for t in ref_in))
    err = relative_error(jacobian, want)
    assert err <= tolerance(spec), f"Jacobian: relative error {err:.2e} over {tolerance(spec):.0e}"
    worst = (jacobian.double() - want).abs().max().item()
    assert worst <= 1e-5 * want.abs().max().item(), f"largest entry error {worst:.2e}"
