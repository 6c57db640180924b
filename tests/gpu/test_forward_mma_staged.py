"""The staged tensor-core template against torch.nn.functional.conv3d in float64, on fresh random
inputs, with outputs poisoned (NaN) before each run so an unwritten element shows: every candidate
of the seed workloads' input gradients (as the forward convolutions they run as) and of 'wide' on
their real shapes in bfloat16 and tf32, edge cases (bfloat16, float16, tf32), and the input
gradient of a seed-like Conv3d end to end through the dispatcher. Kernels are built through the session dispatcher's loader (its cache), all of them up
front, in parallel."""
import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import conv3d_codegen
from conv3d_codegen.autotune import TORCH, Tuner
from conv3d_codegen.build import Target
from conv3d_codegen.dispatch import Dispatcher, using
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.render_mma_staged import MmaStagedTiles, mma_staged_candidates, render_mma_staged
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_forward_mma import CHECKED_BATCH, reference, run_and_check, timings_line  # the same check for every template


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: MmaStagedTiles
    wide: bool = False

    def __str__(self) -> str:
        dtype = "tf32" if self.spec.precision == "tf32" else self.spec.dtype
        return f"{self.name}-{dtype}-{'-'.join(str(self.tiles).split()[1:])}" + ("-i64" if self.wide else "")


def _dtype(spec: ConvSpec, dtype: str) -> ConvSpec:
    """`spec` in `dtype`; 'tf32' is float32 with precision 'tf32'."""
    if dtype == "tf32":
        return spec.model_copy(update={"dtype": "float32", "precision": "tf32"})
    return spec.model_copy(update={"dtype": dtype, "precision": "ieee"})


# The forward convolutions the input gradients of the seeds run as (backward.input_grad), on
# grad_out's shape, and 'wide'.
DGRAD_A = dgrad_spec(_dtype(WORKLOADS["seed-a"].spec, "bfloat16"))[0]
DGRAD_B = dgrad_spec(_dtype(WORKLOADS["seed-b"].spec, "bfloat16"))[0]
WIDE = _dtype(WORKLOADS["wide"].spec, "bfloat16")
TARGETS = {"dgrad-a": (DGRAD_A, (16, 64, 62, 60, 58)), "dgrad-b": (DGRAD_B, (16, 64, 62, 62, 62)),
           "wide": (WIDE, WORKLOADS["wide"].input_shape)}

SEEDS = [Case(name, spec, shape, t) for name, (spec, shape) in TARGETS.items() for t in mma_staged_candidates(spec)]
SEEDS += [Case(name, _dtype(spec, "float16"), shape, mma_staged_candidates(_dtype(spec, "float16"))[0])
          for name, (spec, shape) in TARGETS.items()]
SEEDS += [Case(name, _dtype(spec, "tf32"), shape, t) for name, (spec, shape) in TARGETS.items()
          for t in mma_staged_candidates(_dtype(spec, "tf32"))]


def _cases(name: str, text: str, dtypes, shape, count: int = 2, **kw) -> list[Case]:
    """The first `count` candidates of the spec in each dtype."""
    found = []
    for dtype in dtypes:
        spec = _dtype(ConvSpec.from_text(text), dtype)
        found += [Case(name, spec, shape, t, **kw) for t in mma_staged_candidates(spec)[:count]]
    return found


BOTH = ("bfloat16", "float16")
ALL = ("bfloat16", "float16", "tf32")
BF16_TF32 = ("bfloat16", "tf32")
EDGES = (
    _cases("odd-sizes", "3x3x3 --cin 16 --cout 8 --padding 1", ALL, (2, 16, 7, 9, 33))         # w odd: 2-byte loads
    + _cases("w-even", "3x3x3 --cin 32 --cout 24 --padding 1", ALL, (2, 32, 5, 11, 34))
    + _cases("no-padding", "3x5x7 --cin 64 --cout 3 --no-bias", BF16_TF32, (2, 64, 5, 9, 20))
    + _cases("dgrad-like-long-rows", "3x5x7 --cin 64 --cout 3 --padding 2x4x6 --no-bias", ALL, (2, 64, 4, 6, 130))
    + _cases("stride2", "3x3x3 --cin 32 --cout 8 --stride 2 --padding 1", BF16_TF32, (2, 32, 9, 11, 40))
    + _cases("stride1x2x3", "3x3x3 --cin 16 --cout 3 --stride 1x2x3 --padding 1", BF16_TF32, (2, 16, 5, 12, 50))
    + _cases("dilation2", "3x3x3 --cin 16 --cout 24 --dilation 2 --padding 2", ["float16", "tf32"], (2, 16, 7, 9, 30))
    + _cases("dilation1x2x3", "3x3x5 --cin 32 --cout 3 --dilation 1x2x3 --padding 1x2x6 --no-bias", ["float16", "tf32"],
             (2, 32, 5, 8, 29))
    + _cases("cin64-cout64", "3x3x3 --cin 64 --cout 64 --padding 1", ALL, (2, 64, 4, 8, 70))
    + _cases("cin64-cout24", "3x3x3 --cin 64 --cout 24 --padding 1 --no-bias", BF16_TF32, (1, 64, 3, 9, 31))
    + _cases("groups2", "3x3x3 --cin 64 --cout 48 --groups 2 --padding 1", BF16_TF32, (2, 64, 3, 5, 26))
    + _cases("kernel1", "1x1x1 --cin 64 --cout 64", BF16_TF32, (2, 64, 3, 5, 36))
    + _cases("padding-same-even", "2x4x3 --cin 16 --cout 5 --padding same --dilation 1x2x1", BF16_TF32, (2, 16, 4, 7, 9))
    + _cases("plane-in-padding", "3x3x3 --cin 16 --cout 8 --padding 3 --stride 2", BF16_TF32, (2, 16, 3, 6, 10))
    + _cases("offsets64", "3x5x7 --cin 64 --cout 3 --padding 2x4x6 --no-bias", BF16_TF32, (2, 64, 5, 9, 21),
             count=1, wide=True)
    + _cases("offsets64-cout64", "3x3x3 --cin 64 --cout 64 --padding 1", ["float16", "tf32"], (1, 64, 3, 6, 34),
             count=1, wide=True)
    # tf32 only: one K step of 8 channels, 8 channels per group, the dgrad-a shape at a small batch
    + _cases("cin8", "3x3x3 --cin 8 --cout 8 --padding 1", ["tf32"], (2, 8, 5, 7, 19))
    + _cases("groups8", "3x3x3 --cin 64 --cout 64 --groups 8 --padding 1", ["tf32"], (1, 64, 3, 6, 20))
    + _cases("dgrad-a-small-batch", "3x5x7 --cin 64 --cout 3 --padding 2x4x6 --no-bias", ["tf32"],
             (2, 64, 12, 60, 58), count=6)
)


@pytest.fixture(scope="module")
def kernels(dispatcher):
    """Every case's kernel, built at once (builds dominate); a failed build fails its case."""
    sources = {str(case): render_mma_staged(case.spec, case.tiles, case.wide) for case in SEEDS + EDGES}
    built = dispatcher.loader.load_many(list(sources.values()), Target.for_device())
    return dict(zip(sources, built))


@pytest.mark.parametrize("case", SEEDS, ids=str)
def test_every_target_candidate_matches_torch(kernels, case: Case):
    run_and_check(kernels[str(case)], case)


@pytest.mark.parametrize("case", EDGES, ids=str)
def test_edge_cases_match_torch(kernels, case: Case):
    run_and_check(kernels[str(case)], case)


def test_an_unaligned_input_takes_the_two_byte_loads(kernels):
    """x one element past a 4-byte boundary: column pairs are not aligned words, so the kernel
    must not use cp.async on them (w is even here, which alone would allow it)."""
    case = next(c for c in EDGES if c.name == "w-even" and c.spec.dtype == "bfloat16")
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    shifted = storage[1:].view(x.shape).copy_(x)
    out = torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                     dtype=x.dtype, device=x.device)
    kernels[str(case)](shifted, weight, bias, out, launch_args(spec, x.shape))
    torch.cuda.synchronize()
    assert relative_error(out[:CHECKED_BATCH], reference(x, weight, bias, spec)) <= tolerance(spec)


def test_an_empty_batch_launches_nothing(kernels):
    case = EDGES[0]
    x, weight, bias = random_inputs(case.spec, (0, *case.input_shape[1:]))
    out = torch.empty((0, case.spec.out_channels, *case.spec.output_size(*x.shape[2:])), dtype=x.dtype, device="cuda")
    kernels[str(case)](x, weight, bias, out, launch_args(case.spec, x.shape))
    torch.cuda.synchronize()


# ---- the input gradient of a seed-like Conv3d, end to end ----

SEED_LIKE = (2, 3, 6, 10, 40)  # seed-a's Conv3d (3 -> 64, 3x5x7) on a small input: grad_out is 2x64x4x6x34


def _seed_like_module(dtype: str):
    """seed-a's Conv3d in bfloat16, or in float32 with precision 'tf32'."""
    torch.manual_seed(0)
    if dtype == "tf32":
        return conv3d_codegen.Conv3d(3, 64, (3, 5, 7), precision="tf32").cuda()
    return conv3d_codegen.Conv3d(3, 64, (3, 5, 7)).cuda().to(torch.bfloat16)


@pytest.mark.parametrize("dtype", ["bfloat16", "tf32"])
def test_the_input_gradient_of_a_seed_like_conv3d_runs_the_staged_kernel(dispatcher, dtype):
    """A kept autotuning record that names a staged winner for the gradient's convolution: the
    backward pass of conv3d_codegen.Conv3d must run that kernel, and match float64 torch. (Over
    the session's cache, where the kernels of this module are built.)"""
    module = _seed_like_module(dtype)
    spec = module.spec
    assert spec.precision == ("tf32" if dtype == "tf32" else "ieee")
    dspec = dgrad_spec(spec)[0]
    grad_shape = (SEED_LIKE[0], spec.out_channels, *spec.output_size(*SEED_LIKE[2:]))
    tiles = mma_staged_candidates(dspec)[0]
    routed = Dispatcher(dispatcher.cache)
    target, device = Target.for_device(), torch.cuda.get_device_name()
    name, key = Tuner.record_id(dspec, grad_shape, target, device)
    routed.cache.write_record(name, key, {"winner": str(tiles), "tiles": dataclasses.asdict(tiles),
                                          "template": tiles.template, "dropped": {},
                                          "timings_ms": {str(tiles): 0.1, TORCH: 1.0}})
    x = torch.randn(SEED_LIKE, device="cuda", dtype=module.weight.dtype, requires_grad=True)
    with using(routed):
        out = module(x)
        grad = torch.randn_like(out)
        out.backward(grad)
    plans = [p for p in routed.plans() if p.spec == dspec]
    assert plans and plans[0].kernel is not None, [p.describe() for p in routed.plans()]
    assert plans[0].kernel.source.template == "conv3d_fwd_mma_staged.cu.j2", plans[0].describe()
    x64 = x.detach().double().requires_grad_()
    F.conv3d(x64, module.weight.detach().double(), module.bias.detach().double()).backward(grad.double())
    err = relative_error(x.grad, x64.grad)
    assert err <= tolerance(spec), f"input gradient: relative error {err:.2e} over {tolerance(spec):.0e}"


@pytest.mark.parametrize("dtype", ["bfloat16", "tf32"])
def test_autotuning_the_gradient_convolution_verifies_every_staged_candidate(dispatcher, dtype):
    """Autotuning the gradient's convolution builds, verifies and times the staged candidates
    with the others; none is dropped. (Over the session's cache: the staged ones are built.)"""
    spec = dgrad_spec(_seed_like_module(dtype).spec)[0]
    shape = (2, 64, 8, 16, 64)
    tuning = Dispatcher(dispatcher.cache, autotune=True)
    x, weight, _ = random_inputs(spec, shape)
    plan = tuning.plan_for(spec, x, weight, None)
    choice = tuning.tuner.lookup(spec, shape, Target.for_device(), torch.cuda.get_device_name())
    staged = {str(t) for t in mma_staged_candidates(spec)}
    assert plan.tuned and staged <= set(choice.timings_ms)
    assert not staged & set(choice.dropped), choice.dropped
    print(f"\n{spec.tag} {shape}: winner {choice.label}; " + timings_line(choice))
