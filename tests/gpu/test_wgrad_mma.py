"""The tensor-core wgrad template against torch's float64 gradients of the weight and the bias,
on fresh random inputs, with the workspace and the outputs poisoned (NaN) before each run, so
an element a kernel leaves unwritten shows. Every candidate of the seeds (bfloat16, tf32, float32
'ieee' as 3xTF32 at float32's bar; the first two in float16) on two samples of their shape, then the first and last candidates of edge specs: odd
sizes, rows longer than an item, padding, strides, dilation, groups, kw > 8, no bias, more
channels than a block, N over several blocks, 64-bit offsets. Then the public path: a
Conv3d's backward in bfloat16 with a kept wgrad record naming a tensor-core winner."""
import time
from dataclasses import dataclass

import pytest
import torch

from conv3d_codegen import Conv3d, backward
from conv3d_codegen.autotune import TORCH, keep
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, source_for, using
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.render_wgrad_mma import WgradMmaTiles, render_wgrad_mma, wgrad_mma_candidates
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: WgradMmaTiles
    wide: bool = False

    def __str__(self) -> str:
        return self.name


def _spec(text: str, dtype: str) -> ConvSpec:
    if dtype == "tf32":
        return ConvSpec.from_text(f"{text} --dtype float32 --precision tf32")
    return ConvSpec.from_text(f"{text} --dtype {dtype}")


def _cases(name: str, spec: ConvSpec, shape, which=slice(None), wide: bool = False) -> list[Case]:
    ow = spec.output_size(*shape[2:])[2]
    found = wgrad_mma_candidates(spec, ow)
    chosen = found[which] if isinstance(which, slice) else list(dict.fromkeys(found[i] for i in which))
    dtype = "tf32" if spec.precision == "tf32" else spec.dtype
    return [Case(f"{name}-{dtype}-{'-'.join(str(t).split()[1:])}", spec, shape, t, wide) for t in chosen]


def _seed(name: str, dtype: str) -> ConvSpec:
    return WORKLOADS[name].spec.model_copy(update={"dtype": "float32" if dtype == "tf32" else dtype,
                                                   "precision": "tf32" if dtype == "tf32" else "ieee"})


# float16 differs from bfloat16 only in the MMA's type and the constant 1.0: its first two.
SEEDS = [c for w in ("seed-a", "seed-b") for dt in ("bfloat16", "float16", "tf32", "float32")
         for c in _cases(w, _seed(w, dt), (2, *WORKLOADS[w].input_shape[1:]),
                         which=slice(0, 2) if dt == "float16" else slice(None))]

EDGES = [
    ("odd-rows", "3x5x7 --cin 3 --cout 64", (2, 3, 9, 11, 37), ["bfloat16", "tf32", "float32"]),  # ow 31: odd, one short item
    ("two-items-a-row", "3x5x7 --cin 3 --cout 64", (1, 3, 5, 8, 100), ["bfloat16"]),         # ow 94: items of 64 and 30
    ("pad1-cout8", "3x3x3 --cin 4 --cout 8 --padding 1", (2, 4, 6, 5, 21), ["float16"]),     # 8 of 16 channels a tile
    ("stride1x1x2", "3x5x7 --cin 4 --cout 16 --padding 1x2x0 --stride 1x1x2", (3, 4, 9, 11, 37),
     ["float16", "tf32", "float32"]),                                                         # two phases along w
    ("stride3-pad", "3x5x7 --cin 3 --cout 16 --stride 1x1x3 --padding 1x2x3", (2, 3, 9, 11, 40), ["bfloat16"]),
    ("stride2", "3x3x3 --cin 4 --cout 8 --stride 2 --padding 1", (2, 4, 9, 10, 23), ["bfloat16"]),
    ("dil1x2x2", "1x3x5 --cin 2 --cout 8 --padding 0x1x2 --dilation 1x2x2", (2, 2, 3, 9, 19), ["bfloat16"]),
    ("dil2", "3x3x3 --cin 4 --cout 8 --dilation 2 --padding 1", (2, 4, 7, 8, 17), ["float16"]),  # one copy
    ("groups2-same", "3x3x3 --cin 8 --cout 16 --groups 2 --padding same", (2, 8, 5, 6, 13),
     ["bfloat16", "tf32", "float32"]),
    ("depthwise", "3x3x3 --cin 8 --cout 8 --groups 8 --padding same", (2, 8, 5, 6, 13), ["bfloat16"]),
    ("kw9", "1x2x9 --cin 2 --cout 24 --padding 0x1x4", (3, 2, 5, 6, 29), ["float16"]),       # two n8 tiles a row
    ("kw9-dil-nobias", "1x2x9 --cin 2 --cout 24 --padding 0x1x4 --dilation 1x1x2 --no-bias", (2, 2, 5, 6, 35),
     ["bfloat16", "tf32", "float32"]),
    ("nobias", "3x3x3 --cin 4 --cout 8 --padding 1 --no-bias", (2, 4, 6, 5, 21), ["bfloat16"]),
    ("cout72", "3x3x3 --cin 3 --cout 72", (2, 3, 6, 7, 20), ["bfloat16"]),                   # two blocks along M
    ("wide-n", "3x3x3 --cin 64 --cout 64 --padding 1", (2, 64, 5, 6, 18), ["bfloat16", "float32"]),     # N over many blocks
    ("pointwise-ow-odd", "1x1x1 --cin 5 --cout 40", (2, 5, 4, 5, 17), ["bfloat16"]),         # 3 m16 tiles, odd ow
    ("short-rows", "3x3x3 --cin 4 --cout 8", (2, 4, 5, 5, 9), ["float16"]),                  # ow 7
]
EDGE_CASES = [c for name, text, shape, dtypes in EDGES for dt in dtypes
              for c in _cases(name, _spec(text, dt), shape, which=(0, -1))]
EDGE_CASES += _cases("offsets64", _spec("3x5x7 --cin 3 --cout 64 --padding 1", "bfloat16"), (2, 3, 7, 9, 33),
                     which=(0,), wide=True)
CASES = SEEDS + EDGE_CASES

# The public path's convolution: Conv3d(3, 16, (3, 5, 7), padding=(1, 2, 3)) on PUBLIC_SHAPE.
PUBLIC = "3x5x7 --cin 3 --cout 16 --padding 1x2x3"
PUBLIC_SHAPE = (2, 3, 6, 9, 40)


def public_sources(dtype: str) -> list:
    """What its forward, dgrad and (kept) wgrad run: built with the rest, up front."""
    spec = _spec(PUBLIC, dtype)
    out_shape = (PUBLIC_SHAPE[0], spec.out_channels, *spec.output_size(*PUBLIC_SHAPE[2:]))
    dspec, _ = dgrad_spec(spec)
    return [source_for(spec, PUBLIC_SHAPE)[0], source_for(dspec, out_shape)[0],
            render_wgrad_mma(spec, wgrad_mma_candidates(spec, out_shape[-1])[-1])]


@pytest.fixture(scope="module")
def kernels(dispatcher):
    """Every case's kernel, built at once (builds dominate); a failed build fails its case."""
    sources = {c.name: render_wgrad_mma(c.spec, c.tiles, c.wide) for c in CASES}
    public = public_sources("bfloat16")  # into the session cache, where the public path's test finds them
    built = dispatcher.loader.load_many(list(sources.values()) + public, Target.for_device())
    return dict(zip(sources, built))


_references: dict = {}


def inputs_and_reference(spec: ConvSpec, shape):
    """Random x and grad_out (cached per spec and shape: the seeds share them between their
    candidates) and torch's float64 gradients of the weight and the bias."""
    key = (spec, shape)
    if key not in _references:
        torch.manual_seed(len(_references))
        x, weight, _ = random_inputs(spec, shape)
        grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])),
                               dtype=x.dtype, device=x.device)
        _, want_w, want_b = backward.torch_grads(spec, grad_out.double(), x.double(), weight.double(),
                                                 (False, True, True))
        _references.clear()  # one at a time: the seeds' are large
        _references[key] = (x, grad_out, want_w, want_b)
    return _references[key]


def run(kernel, spec: ConvSpec, tiles: WgradMmaTiles, x, grad_out, splits: int | None = None, need_bias=True):
    """grad_w, grad_b from the kernel, into NaN-poisoned outputs and workspace."""
    if splits is None:
        splits = backward.wgrad_splits(spec, tiles, x, grad_out.shape[2:])
    workspace = torch.full((splits * (spec.out_channels * spec.in_per_group * spec.kernel_volume
                                      + (spec.out_channels if spec.bias else 0)),), float("nan"), device=x.device)
    grad_w = torch.full(spec.weight_shape, float("nan"), dtype=x.dtype, device=x.device)
    grad_b = torch.full((spec.out_channels,), float("nan"), dtype=x.dtype, device=x.device) \
        if spec.bias and need_bias else None
    kernel(x, grad_out, grad_b, grad_w, launch_args(spec, x.shape) | {"splits": splits,
                                                                     "workspace": workspace.data_ptr()})
    torch.cuda.synchronize()
    return grad_w, grad_b


def check(kernel, case: Case, splits: int | None = None):
    if isinstance(kernel, Exception):
        raise kernel
    spec = case.spec
    x, grad_out, want_w, want_b = inputs_and_reference(spec, case.input_shape)
    grad_w, grad_b = run(kernel, spec, case.tiles, x, grad_out, splits)
    err = relative_error(grad_w, want_w)
    assert err <= tolerance(spec), \
        f"grad of the weight: relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten)"
    if spec.bias:
        err = relative_error(grad_b, want_b)
        assert err <= tolerance(spec), f"grad of the bias: relative error {err:.2e} over {tolerance(spec):.0e}"
    return grad_w, grad_b


@pytest.mark.parametrize("case", SEEDS, ids=str)
def test_every_seed_candidate_matches_torch(kernels, case: Case):
    check(kernels[case.name], case)


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_edge_cases_match_torch(kernels, case: Case):
    check(kernels[case.name], case)


@pytest.mark.parametrize("splits", [1, 5])
def test_any_number_of_splits(kernels, splits):
    case = next(c for c in EDGE_CASES if c.name.startswith("stride1x1x2-float16"))
    check(kernels[case.name], case, splits=splits)


def test_the_result_is_the_same_on_every_run(kernels):
    case = next(c for c in EDGE_CASES if c.name.startswith("odd-rows-bfloat16"))
    x, grad_out, _, _ = inputs_and_reference(case.spec, case.input_shape)
    first = run(kernels[case.name], case.spec, case.tiles, x, grad_out)
    for _ in range(3):
        again = run(kernels[case.name], case.spec, case.tiles, x, grad_out)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_no_bias_gradient_asked_for(kernels):
    case = next(c for c in EDGE_CASES if c.name.startswith("pad1-cout8"))
    x, grad_out, want_w, _ = inputs_and_reference(case.spec, case.input_shape)
    grad_w, grad_b = run(kernels[case.name], case.spec, case.tiles, x, grad_out, need_bias=False)
    assert grad_b is None and relative_error(grad_w, want_w) <= tolerance(case.spec)


def test_an_empty_batch_gives_zeros(kernels):
    case = next(c for c in EDGE_CASES if c.name.startswith("pad1-cout8"))
    x, _, _ = random_inputs(case.spec, (0, *case.input_shape[1:]))
    grad_out = torch.empty((0, case.spec.out_channels, *case.spec.output_size(*x.shape[2:])), dtype=x.dtype,
                           device="cuda")
    grad_w, grad_b = run(kernels[case.name], case.spec, case.tiles, x, grad_out, splits=1)
    assert not grad_w.any() and not grad_b.any()


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_conv3d_backward_runs_a_kept_tensor_core_winner(kernels, cache_root, dtype):
    """The public path: a kept wgrad record naming tensor-core tiles (as the tuner keeps one) is
    read back by a fresh dispatcher over the session's cache, whose Conv3d backward then runs
    that kernel."""
    torch.manual_seed(0)
    conv = Conv3d(3, 16, (3, 5, 7), padding=(1, 2, 3), bias=True).cuda().to(getattr(torch, dtype))
    x = torch.randn(PUBLIC_SHAPE, device="cuda", dtype=conv.weight.dtype, requires_grad=True)
    spec = conv.spec
    assert spec == _spec(PUBLIC, dtype)
    ow = spec.output_size(*x.shape[2:])[2]
    tiles = wgrad_mma_candidates(spec, ow)[-1]
    dispatcher = Dispatcher(KernelCache(cache_root))
    target = Target.for_device()
    keep(dispatcher.cache, backward._record_id(spec, x.detach(), target), spec, x.detach(), tiles,
         {str(tiles): 1.0, TORCH: 2.0}, {}, time.perf_counter(), op="wgrad")
    with using(dispatcher):
        out = conv(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    plans = backward._wgrad_plans.of(dispatcher).plans()
    assert any(p.tiles == tiles and p.kernel is not None for p in plans), plans
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, conv.weight, conv.bias))
    torch.nn.functional.conv3d(x64, w64, b64, padding=(1, 2, 3)).backward(grad_out.double())
    for name, got, want in [("weight", conv.weight.grad, w64.grad), ("bias", conv.bias.grad, b64.grad),
                            ("input", x.grad, x64.grad)]:
        err = relative_error(got, want)
        assert err <= tolerance(spec), f"grad of the {name}: relative error {err:.2e}"
