"""The depthwise template against torch.nn.functional.conv3d in float64, on fresh random inputs,
with outputs poisoned (NaN) before each run so an unwritten element shows: every candidate of
every case. Kernels are built through the session dispatcher's loader (its cache), all of them
up front, in parallel. Last, an autotuned call through a dispatcher that keeps a winner."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.autotune import TORCH
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render_depthwise import DepthwiseTiles, depthwise_candidates, render_depthwise
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_forward_mma import CHECKED_BATCH, reference, run_and_check, timings_line  # the same check for every template

ODD = (17, 9, 33)  # d, h, w: no size a multiple of a tile; w = 33 takes the element-wise stores


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: DepthwiseTiles
    wide: bool = False

    def __str__(self) -> str:
        return f"{self.name}-{self.spec.dtype}-{'-'.join(str(self.tiles).split())}"


def _cases(name: str, text: str, dtypes, shape=None, wide: bool = False) -> list[Case]:
    found = []
    for dtype in dtypes:
        spec = ConvSpec.from_text(f"{text} --dtype {dtype}")
        input_shape = shape or (2, spec.in_channels, *ODD)
        found += [Case(name, spec, input_shape, t, wide) for t in depthwise_candidates(spec)]
    return found


ALL = ("float32", "bfloat16", "float16")
DW = "--cin 4 --cout 4 --groups 4"
CASES = (
    _cases("k3-pad1", f"3x3x3 {DW} --padding 1", ALL)
    + _cases("k3-pad0", f"3x3x3 {DW}", ["bfloat16"])
    + _cases("k3-pad2", f"3x3x3 {DW} --padding 2", ["float32"])
    + _cases("k3-padsame", f"3x3x3 {DW} --padding same", ["float16"])
    + _cases("k1", f"1x1x1 {DW}", ["float32", "bfloat16"])
    + _cases("k3x5x7", f"3x5x7 {DW}", ["bfloat16"])
    + _cases("k3x5x7-pad1x2x3", f"3x5x7 {DW} --padding 1x2x3", ["float32"])
    + _cases("k5-pad2", f"5x5x5 {DW} --padding 2", ["float32", "float16"])        # weights in shared memory
    + _cases("k7-pad3", "7x7x7 --cin 2 --cout 2 --groups 2 --padding 3", ["float32"])
    + _cases("dil2", f"3x3x3 {DW} --padding 2 --dilation 2", ["float32"])
    + _cases("dil1x2x3", f"3x3x3 {DW} --padding 1 --dilation 1x2x3", ["bfloat16"])
    + _cases("stride2", f"3x3x3 {DW} --padding 1 --stride 2", ["float32", "bfloat16"])
    + _cases("stride1x2x3", f"3x3x3 {DW} --padding 1 --stride 1x2x3", ["float32"])
    + _cases("nobias", f"3x3x3 {DW} --padding 1 --no-bias", ["float16"])
    + _cases("multiplier2", "3x3x3 --cin 4 --cout 8 --groups 4 --padding 1", ["float32", "bfloat16"])
    + _cases("smaller-than-a-tile", f"3x3x3 {DW} --padding 1", ["float32", "bfloat16"], shape=(1, 4, 3, 5, 6))
    + _cases("one-output", f"3x3x3 {DW}", ["float32"], shape=(1, 4, 3, 3, 3))
    + _cases("many-tiles", f"3x3x3 {DW} --padding 1", ["float32", "bfloat16"], shape=(1, 4, 11, 40, 72))
    + _cases("vector-stores", f"3x3x3 {DW} --padding 1", ["float32", "float16"], shape=(2, 4, 9, 16, 32))
    + _cases("offsets64", f"3x3x3 {DW} --padding 1", ["float32"], wide=True)
)
WORKLOAD = [Case("depthwise", WORKLOADS["depthwise"].spec.model_copy(update={"dtype": dtype}),
                 WORKLOADS["depthwise"].input_shape, t)
            for dtype in ("float32", "bfloat16")
            for t in depthwise_candidates(WORKLOADS["depthwise"].spec.model_copy(update={"dtype": dtype}))]


@pytest.fixture(scope="module")
def kernels(dispatcher):
    """Every case's kernel, built at once (builds dominate); a failed build fails its case."""
    sources = {str(case): render_depthwise(case.spec, case.tiles, case.wide) for case in CASES + WORKLOAD}
    built = dispatcher.loader.load_many(list(sources.values()), Target.for_device())
    return dict(zip(sources, built))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_depthwise_kernel_matches_torch(kernels, case: Case):
    run_and_check(kernels[str(case)], case)


@pytest.mark.parametrize("case", WORKLOAD, ids=str)
def test_every_workload_candidate_matches_torch(kernels, case: Case):
    run_and_check(kernels[str(case)], case)


def test_an_unaligned_output_takes_the_element_stores(kernels):
    """y one element past an aligned address: the launcher must not use vector stores."""
    case = next(c for c in CASES if c.name == "vector-stores" and c.spec.dtype == "float32")
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    size = (x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:]))
    storage = torch.full((torch.Size(size).numel() + 1,), float("nan"), dtype=x.dtype, device=x.device)
    out = storage[1:].view(size)
    kernels[str(case)](x, weight, bias, out, launch_args(spec, x.shape))
    torch.cuda.synchronize()
    assert relative_error(out[:CHECKED_BATCH], reference(x, weight, bias, spec)) <= tolerance(spec)


def test_an_empty_batch_launches_nothing(kernels):
    case = CASES[0]
    x, weight, bias = random_inputs(case.spec, (0, *case.input_shape[1:]))
    out = torch.empty((0, case.spec.out_channels, *case.spec.output_size(*x.shape[2:])), dtype=x.dtype, device="cuda")
    kernels[str(case)](x, weight, bias, out, launch_args(case.spec, x.shape))
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_autotuning_times_the_depthwise_candidates_and_keeps_a_winner(tmp_path, dtype):
    spec = ConvSpec.from_text(f"3x3x3 --cin 16 --cout 16 --groups 16 --padding 1 --dtype {dtype}")
    shape = (2, 16, 24, 32, 32)
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    x, weight, bias = random_inputs(spec, shape)
    out = run(tuning, x, weight, bias, padding=1, groups=16)
    plan = tuning.plan(x, weight, bias, 1, 1, 1, 16)
    ref = F.conv3d(x.double(), weight.double(), bias.double(), padding=1, groups=16)
    assert plan.tuned and relative_error(out, ref) <= tolerance(spec)
    choice = tuning.tuner.lookup(spec, shape, Target.for_device(), torch.cuda.get_device_name())
    assert {str(t) for t in depthwise_candidates(spec)} <= set(choice.timings_ms)
    assert not {str(t) for t in depthwise_candidates(spec)} & set(choice.dropped), choice.dropped
    print(f"\n{spec.tag}: winner {choice.label}; " + timings_line(choice))
    later = Dispatcher(KernelCache(tmp_path), autotune=False)
    reused = later.plan(x, weight, bias, 1, 1, 1, 16)
    assert reused.tuned and later.cache.stats.builds == 0
    if choice.winner is None:
        assert reused.route == TORCH
    else:
        assert reused.kernel.source.params["tiles"] == choice.label
        again = run(later, x, weight, bias, padding=1, groups=16)
        assert relative_error(again, ref) <= tolerance(spec)
