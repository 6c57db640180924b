"""The tensor-core template against torch.nn.functional.conv3d in float64, on fresh random
inputs, with outputs poisoned (NaN) before each run so an unwritten element shows. Kernels are
built through the session dispatcher's loader (its cache), all of them up front, in parallel.
The seed candidates are built for their input's size (as the dispatcher and the tuner build
them), and so is every third case of the edge matrices beside its run-time-size build."""
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.build import Target
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.render_mma import MmaTiles, default_mma_tiles, mma_candidates, render_mma
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

CHECKED_BATCH = 2  # the seed workloads are compared on their first samples: float64 is slow
ODD = (17, 9, 33)  # d, h, w: no size a multiple of a tile; w = 33 leaves row tails everywhere


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: MmaTiles | None = None
    wide: bool = False
    sized: bool = False  # built for input_shape's size only (compile-time sizes)

    def __str__(self) -> str:
        return self.name


def _spec(text: str, dtype: str) -> ConvSpec:
    precision = " --precision tf32" if dtype == "tf32" else ""
    return ConvSpec.from_text(f"{text} --dtype {'float32' if dtype == 'tf32' else dtype}{precision}")


def _case(name: str, text: str, dtype: str, shape=None, batch: int = 2, **kw) -> Case:
    """A case named name-dtype; shape defaults to ODD with `batch` samples."""
    spec = _spec(text, dtype)
    return Case(f"{name}-{dtype}", spec, shape or (batch, spec.in_channels, *ODD), **kw)


DTYPES = ["bfloat16", "float16", "tf32", "float32"]  # float32: 3xTF32 (K up to 512: not loop-streamed)
KERNELS = ["1x1x1", "3x3x3", "3x5x7", "5x3x3", "1x3x3", "7x1x1"]
VARIATIONS = {
    "stride2": "--stride 2",
    "stride1x2x3": "--stride 1x2x3",
    "pad1": "--padding 1",
    "padsame": "--padding same",
    "pad2x1x0": "--padding 2x1x0",
    "dil2": "--dilation 2 --padding 1",
    "groups2": "--groups 2",
    "nobias": "--no-bias",
}

CASES = [_case(f"base-{k}", f"{k} --cin 4 --cout 8", dt, batch=1 + 4 * (i % 2))
         for i, k in enumerate(KERNELS) for dt in DTYPES]
CASES += [_case(f"{name}-{KERNELS[(i + j) % len(KERNELS)]}", f"{KERNELS[(i + j) % len(KERNELS)]} --cin 4 --cout 8 {extra}",
                dt, batch=1 + 4 * (j % 2))
          for i, (name, extra) in enumerate(VARIATIONS.items()) for j, dt in enumerate(DTYPES)]
CASES += [
    _case("depthwise", "3x3x3 --cin 8 --cout 8 --groups 8 --padding same", "bfloat16"),
    _case("depthwise", "3x3x3 --cin 8 --cout 8 --groups 8 --padding same", "tf32"),
    _case("cout40", "3x3x3 --cin 3 --cout 40 --padding 1", "bfloat16"),          # an odd number of n8 tiles
    _case("cout72", "3x3x3 --cin 4 --cout 72", "float16"),                       # two blocks along N, the second short
    _case("groups3-cout72", "3x3x3 --cin 6 --cout 72 --groups 3 --padding 1", "tf32"),
    _case("loop-streamed", "3x3x3 --cin 64 --cout 64 --padding 1", "bfloat16", shape=(2, 64, 9, 10, 11)),
    _case("loop-streamed", "3x3x3 --cin 64 --cout 64 --padding 1", "tf32", shape=(2, 64, 9, 10, 11)),
    _case("loop-strided", "5x3x3 --cin 32 --cout 64 --stride 2 --padding 1", "bfloat16", shape=(3, 32, 11, 16, 21)),
    _case("whole-vectors", "3x3x3 --cin 4 --cout 16", "bfloat16", shape=(2, 4, 10, 10, 20)),  # od*oh*ow % 8 == 0
    _case("whole-vectors", "3x3x3 --cin 4 --cout 16", "tf32", shape=(2, 4, 10, 10, 20)),
    # Whole vectors leave by bulk copies on sm_90 (tiles of two blocks an SM): a second, short
    # block along N; groups (the copies start past channel 0) with 32-bit outputs; 64-bit offsets.
    # The seed candidates add 3xTF32 and epilogues of several passes.
    _case("whole-vectors-cout72", "3x3x3 --cin 4 --cout 72", "float16", shape=(2, 4, 10, 10, 20)),
    _case("whole-vectors-groups3", "3x3x3 --cin 6 --cout 72 --groups 3 --padding 1", "tf32", shape=(3, 6, 8, 8, 12)),
    _case("whole-vectors-offsets64", "3x3x3 --cin 4 --cout 16", "bfloat16", shape=(2, 4, 10, 10, 20), wide=True),
    _case("one-position", "3x5x7 --cin 3 --cout 64", "bfloat16", shape=(1, 3, 3, 5, 7)),
    _case("offsets64", "3x5x7 --cin 3 --cout 64 --padding 1", "bfloat16", wide=True),
    _case("offsets64-loop", "3x3x3 --cin 64 --cout 64 --padding 1", "tf32", shape=(2, 64, 9, 10, 11), wide=True),
]


def shared_a(spec: ConvSpec, tile_w: int = 64, first: bool = True) -> MmaTiles:
    """A shared-A candidate of `spec` with lines of tile_w: the first (two blocks an SM where
    it fits) or the last (fewer, larger blocks)."""
    found = [t for t in mma_candidates(spec) if t.a_from == "shared" and t.tile_w == tile_w]
    return found[0] if first else found[-1]


# Shared A over the whole matrix above, then at its own edges: pairs of taps read from the
# left-shifted copy (odd stride along w, w padded), pairs all even (stride 2), lines longer
# than a tile (ow 94: two tiles along w, the second short), shorter (ow 7), outputs whose ow is
# a multiple of 8 (16-byte stores), even (pairs) and odd (elements), lines past the sample's
# end, K in a loop with weights streamed (3 blocks of 128 an SM), and dgrad's shape of problem
# (64 -> 3 channels, the flipped 3x5x7 kernel, padding 2x4x6).
SHARED_CASES = [Case(f"{c.name}-shared", c.spec, c.input_shape, shared_a(c.spec), c.wide) for c in CASES]
SHARED_CASES += [
    _case(name, text, dt, shape=shape, tiles=tiles)
    for name, text, shape, dts, tile_w, first in [
        ("pairs-stride3-pad", "3x5x7 --cin 3 --cout 16 --stride 1x1x3 --padding 1x2x3", (2, 3, 9, 11, 40),
         DTYPES, 64, True),
        ("pairs-stride2", "1x3x5 --cin 5 --cout 8 --stride 2", (2, 5, 7, 9, 37), ["bfloat16", "tf32"], 32, True),
        ("pairs-kw9", "1x2x9 --cin 2 --cout 24 --padding 0x1x4", (3, 2, 5, 6, 29), ["float16", "tf32"], 32, False),
        ("two-tiles-along-w", "3x5x7 --cin 3 --cout 64", (2, 3, 5, 8, 100), DTYPES, 64, True),
        ("short-lines", "3x3x3 --cin 4 --cout 8 --padding 1", (2, 4, 6, 5, 7), DTYPES, 32, True),
        ("ow-multiple-of-8", "3x3x3 --cin 4 --cout 16", (2, 4, 6, 7, 18), DTYPES, 32, True),
        ("ow-even", "3x5x7 --cin 3 --cout 16", (2, 3, 5, 7, 16), DTYPES, 64, True),
        ("ow-odd", "3x5x7 --cin 3 --cout 16", (2, 3, 5, 7, 17), DTYPES, 64, False),
        ("loop-streamed-w32", "3x3x3 --cin 64 --cout 64 --padding 1", (2, 64, 9, 10, 11), DTYPES[:3], 32, False),
        ("loop-streamed-w64", "3x3x3 --cin 64 --cout 64 --padding 1", (2, 64, 5, 6, 70), ["bfloat16"], 64, True),
        ("dgrad-shape", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", (2, 64, 6, 7, 9), ["bfloat16", "tf32"], 64, True),
        ("groups-dilation", "3x3x5 --cin 8 --cout 16 --groups 2 --dilation 1x2x2 --padding 1x2x4",
         (2, 8, 7, 9, 23), DTYPES, 32, True),
    ]
    for dt in dts
    for tiles in [shared_a(_spec(text, dt), tile_w, first)]
]
SHARED_CASES += [
    Case("offsets64-shared-bfloat16", _spec("3x5x7 --cin 3 --cout 64 --padding 1", "bfloat16"), (2, 3, *ODD),
         shared_a(_spec("3x5x7 --cin 3 --cout 64 --padding 1", "bfloat16")), wide=True),
]

SEEDS = []
for _name in ("seed-a", "seed-b"):
    for _dtype in DTYPES:
        _spec_ = WORKLOADS[_name].spec.model_copy(update={"dtype": "float32" if _dtype == "tf32" else _dtype,
                                                           "precision": "tf32" if _dtype == "tf32" else "ieee"})
        _tiles = mma_candidates(_spec_) if _dtype != "float16" else [default_mma_tiles(_spec_)]
        SEEDS += [Case(f"{_name}-{_dtype}-{'-'.join(str(t).split())}", _spec_, WORKLOADS[_name].input_shape, t,
                       sized=True) for t in _tiles]
SIZED_CASES = [replace(c, name=f"{c.name}-sized", sized=True) for c in CASES[::3] + SHARED_CASES[::3]]


@pytest.fixture(scope="module")
def kernels(dispatcher):
    """Every case's kernel, built at once (builds dominate); a failed build fails its case."""
    sources = {case.name: render_mma(case.spec, case.tiles, case.wide, case.input_shape[2:] if case.sized else None)
               for case in CASES + SHARED_CASES + SEEDS + SIZED_CASES}
    built = dispatcher.loader.load_many(list(sources.values()), Target.for_device())
    return dict(zip(sources, built))


def reference(x, weight, bias, spec: ConvSpec) -> torch.Tensor:
    x = x[:CHECKED_BATCH]
    return F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **spec.functional_args())


def run_and_check(kernel, case: Case):
    if isinstance(kernel, Exception):
        raise kernel
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    out = torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                     dtype=x.dtype, device=x.device)
    kernel(x, weight, bias, out, launch_args(spec, x.shape))
    torch.cuda.synchronize()
    # The comparison reads the first samples only; the poison shows an unwritten element anywhere.
    assert torch.isfinite(out).all(), f"{int((~torch.isfinite(out)).sum())} output elements left unwritten"
    err = relative_error(out[:CHECKED_BATCH], reference(x, weight, bias, spec))
    assert err <= tolerance(spec), f"relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten output)"


SIZES = {"any-size": False, "sized": True}  # the row templates' cases run built both ways


def build_both_ways(dispatcher, render, cases) -> dict:
    """Every case's kernel for any input size and for its own, keyed (str(case), sized), built at once;
    a failed build fails its case. `render(spec, tiles, size=...)` is the template's."""
    sources = {(str(case), sized): render(case.spec, case.tiles, size=case.input_shape[2:] if sized else None)
               for case in cases for sized in SIZES.values()}
    built = dispatcher.loader.load_many(list(sources.values()), Target.for_device())
    return dict(zip(sources, built))


def timings_line(choice, most: int | None = None) -> str:
    """A tuning record's timings, fastest first: "dropped" where the tuner did not time a candidate
    (a record stores a dropped one's time as null)."""
    ranked = sorted(choice.timings_ms.items(), key=lambda kv: kv[1] if kv[1] is not None else float("inf"))[:most]
    return ", ".join(f"{k} {'dropped' if v is None else f'{v:.4f} ms'}" for k, v in ranked)


def assert_refused(kernel, spec: ConvSpec, input_shape: tuple[int, ...]):
    """The kernel on inputs of `input_shape` returns an error ("invalid argument"), never a wrong result."""
    x, weight, bias = random_inputs(spec, input_shape)
    out = torch.empty((input_shape[0], spec.out_channels, *spec.output_size(*input_shape[2:])), dtype=x.dtype,
                      device="cuda")
    with pytest.raises(RuntimeError, match="invalid argument"):
        kernel(x, weight, bias, out, launch_args(spec, x.shape))


def launch_empty(kernel, spec: ConvSpec, input_shape: tuple[int, ...]):
    """The kernel on a batch of 0 samples of `input_shape`'s size: it launches nothing and returns."""
    x, weight, bias = random_inputs(spec, (0, *input_shape[1:]))
    out = torch.empty((0, spec.out_channels, *spec.output_size(*x.shape[2:])), dtype=x.dtype, device="cuda")
    kernel(x, weight, bias, out, launch_args(spec, x.shape))
    torch.cuda.synchronize()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_mma_kernel_matches_torch(kernels, case: Case):
    run_and_check(kernels[case.name], case)


@pytest.mark.parametrize("case", SHARED_CASES, ids=str)
def test_shared_a_kernel_matches_torch(kernels, case: Case):
    assert case.tiles is not None and case.tiles.a_from == "shared"
    run_and_check(kernels[case.name], case)


@pytest.mark.parametrize("case", SEEDS, ids=str)
def test_every_seed_candidate_matches_torch(kernels, case: Case):
    run_and_check(kernels[case.name], case)


@pytest.mark.parametrize("case", SIZED_CASES, ids=str)
def test_a_kernel_built_for_its_input_size_matches_torch(kernels, case: Case):
    run_and_check(kernels[case.name], case)


def test_a_kernel_built_for_one_size_refuses_another(kernels):
    """An error, never a result computed with the wrong sizes."""
    case = SIZED_CASES[0]
    n, c, d, h, w = case.input_shape
    x, weight, bias = random_inputs(case.spec, (n, c, d, h, w + 1))
    out = torch.empty((n, case.spec.out_channels, *case.spec.output_size(d, h, w + 1)), dtype=x.dtype, device="cuda")
    with pytest.raises(RuntimeError, match="invalid argument"):
        kernels[case.name](x, weight, bias, out, launch_args(case.spec, x.shape))


def test_a_poisoned_output_fails_the_comparison():
    ref = torch.ones(2, 3, dtype=torch.float64)
    assert not relative_error(torch.full((2, 3), float("nan")), ref) <= 1e-2


def test_an_empty_batch_launches_nothing(kernels):
    case = next(c for c in CASES if c.name == "base-3x3x3-bfloat16")
    x, weight, bias = random_inputs(case.spec, (0, *case.input_shape[1:]))
    out = torch.empty((0, case.spec.out_channels, *case.spec.output_size(*x.shape[2:])), dtype=x.dtype, device="cuda")
    kernels[case.name](x, weight, bias, out, launch_args(case.spec, x.shape))
    torch.cuda.synchronize()


def test_an_empty_batch_launches_nothing_with_shared_a(kernels):
    case = next(c for c in SHARED_CASES if c.name == "base-3x3x3-bfloat16-shared")
    x, weight, bias = random_inputs(case.spec, (0, *case.input_shape[1:]))
    out = torch.empty((0, case.spec.out_channels, *case.spec.output_size(*x.shape[2:])), dtype=x.dtype, device="cuda")
    kernels[case.name](x, weight, bias, out, launch_args(case.spec, x.shape))
    torch.cuda.synchronize()
