"""The wgmma row-product template (sm_90a) against torch.nn.functional.conv3d in float64, on fresh
random inputs, with outputs poisoned (NaN) before each run: every candidate of every case
(test_forward_mma's run_and_check: every element written, the first samples compared), each built
twice: for any input size (N = 64 positions, run-time sizes) and for the case's size only (N the
output row's, compile-time sizes, as the dispatcher and the tuner build it). Skipped, saying so,
on GPUs other than compute capability 9.0. Last, autotuning seed-a in bfloat16 through a
dispatcher: the wgmma candidates are timed beside the others and a winner is kept."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.autotune import candidates
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render_wgmma import HOPPER_ARCHES, WgmmaTiles, render_wgmma, wgmma_candidates, wgmma_shape_problem
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_forward_mma import SIZES, assert_refused, build_both_ways, launch_empty, run_and_check, timings_line  # the same checks for every template

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or Target.for_device().arch not in HOPPER_ARCHES,
    reason="the wgmma template runs on compute capability 9.0 (H100, H200) only; this GPU is another")


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: WgmmaTiles

    def __str__(self) -> str:
        return f"{self.name}-{self.spec.dtype}-{'-'.join(str(self.tiles).split()[1:])}"


def _cases(name: str, text: str, dtypes, shape) -> list[Case]:
    found = []
    for dtype in dtypes:
        spec = ConvSpec.from_text(f"{text} --dtype {dtype}")
        input_shape = (shape[0], spec.in_channels, *shape[1:])
        tiles = wgmma_candidates(spec)
        assert tiles, name
        for t in tiles:
            assert wgmma_shape_problem(spec, t, input_shape) is None, (name, t, wgmma_shape_problem(spec, t, input_shape))
            found.append(Case(name, spec, input_shape, t))
    return found


BOTH = ("bfloat16", "float16")
CASES = (
    _cases("k3x5x7", "3x5x7 --cin 3 --cout 64", BOTH, (2, 10, 16, 64))             # seed-a's kernel; oh 12: r 8's last chunk of 4 rows
    + _cases("k3x3x5-partial", "3x3x5 --cin 3 --cout 64", ["bfloat16"], (2, 8, 12, 32))  # ow 28, oh 10: last chunks of 2 rows
    + _cases("k3x5x7-pad1x2x0", "3x5x7 --cin 3 --cout 64 --padding 1x2x0", ["bfloat16"], (2, 6, 12, 64))  # zero rows
    + _cases("k3x5x7-nobias", "3x5x7 --cin 3 --cout 64 --no-bias", ["float16"], (1, 5, 12, 64))
    + _cases("k2x2x5-rows12", "2x2x5 --cin 3 --cout 64", ["bfloat16"], (2, 5, 7, 40))  # 12 rows: no zero row in K
    + _cases("k4x4x5-rows48", "4x4x5 --cin 3 --cout 64", ["bfloat16"], (1, 6, 11, 48))  # 48 input rows: the most
    + _cases("cout40", "3x5x7 --cin 2 --cout 40", ["bfloat16"], (2, 6, 8, 64))      # channels past 40: zero weights
    + _cases("cout16-nobias", "1x3x5 --cin 1 --cout 16 --no-bias", ["float16"], (2, 3, 6, 24))
    + _cases("narrow-row", "3x5x7 --cin 3 --cout 64", ["bfloat16"], (2, 6, 8, 16))   # ow 10: N = 16
    + _cases("many-chunks", "3x5x7 --cin 3 --cout 64", ["bfloat16"], (3, 20, 24, 64))
)
SEED_A = WORKLOADS["seed-a"]
WORKLOAD = [Case("seed-a", spec, SEED_A.input_shape, t)
            for spec in [SEED_A.spec.model_copy(update={"dtype": dtype}) for dtype in BOTH] for t in wgmma_candidates(spec)]



@pytest.fixture(scope="module")
def kernels(dispatcher):
    return build_both_ways(dispatcher, render_wgmma, CASES + WORKLOAD)


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_wgmma_kernel_matches_torch(kernels, case: Case, sized: bool):
    run_and_check(kernels[(str(case), sized)], case)


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
@pytest.mark.parametrize("case", WORKLOAD, ids=str)
def test_every_seed_a_candidate_matches_torch(kernels, case: Case, sized: bool):
    run_and_check(kernels[(str(case), sized)], case)


def test_an_input_the_template_does_not_take_is_refused_by_the_launcher(kernels):
    """w = 60 is not a multiple of 8: the launcher returns an error, never a wrong result."""
    case = CASES[0]
    assert_refused(kernels[(str(case), False)], case.spec, (1, 3, 10, 16, 60))


def test_a_kernel_built_for_one_size_refuses_another(kernels):
    """The case's sized kernel on an input the template takes, of another size: an error, not a wrong result."""
    case = CASES[0]
    d, h, w = case.input_shape[2:]
    assert_refused(kernels[(str(case), True)], case.spec, (1, 3, d, h + 4, w))


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
def test_an_empty_batch_launches_nothing(kernels, sized: bool):
    case = CASES[0]
    launch_empty(kernels[(str(case), sized)], case.spec, case.input_shape)


def test_the_tuner_offers_the_wgmma_candidates_on_this_gpu_only():
    spec = SEED_A.spec.model_copy(update={"dtype": "bfloat16"})
    wgmma = set(wgmma_candidates(spec))
    assert wgmma <= set(candidates(spec, Target.for_device().arch))
    assert not wgmma & set(candidates(spec, "sm_80")) and not wgmma & set(candidates(spec))


def test_autotuning_seed_a_times_the_wgmma_candidates_and_keeps_a_winner(tmp_path):
    spec = SEED_A.spec.model_copy(update={"dtype": "bfloat16"})
    shape = (4, 3, 64, 64, 64)  # seed-a's sizes with fewer samples: the float64 check stays quick
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    x, weight, bias = random_inputs(spec, shape)
    out = run(tuning, x, weight, bias)
    plan = tuning.plan(x, weight, bias, 1, 0, 1, 1)
    ref = F.conv3d(x.double(), weight.double(), bias.double())
    assert plan.tuned and relative_error(out, ref) <= tolerance(spec)
    choice = tuning.tuner.lookup(spec, shape, Target.for_device(), torch.cuda.get_device_name())
    wgmma = {str(t) for t in wgmma_candidates(spec)}
    assert wgmma <= set(choice.timings_ms) and not wgmma & set(choice.dropped), choice.dropped
    print(f"\n{spec.tag}: winner {choice.label}; " + timings_line(choice))
