"""The row-product template against torch.nn.functional.conv3d in float64, on fresh random inputs,
with outputs poisoned (NaN) before each run: every candidate of every case (test_forward_mma's
run_and_check: every element written, the first samples compared), each built twice: for any
input size (run-time sizes) and for the case's size only (compile-time sizes, as the dispatcher
and the tuner build it). Kernels are built through the session dispatcher's loader, all of them
up front. Last, autotuning seed-b in bfloat16 through
a dispatcher: the row-product candidates are timed beside the others and a winner is kept."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render_rows import RowsTiles, render_rows, rows_candidates, rows_shape_problem
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_forward_mma import SIZES, assert_refused, build_both_ways, launch_empty, run_and_check, timings_line  # the same checks for every template


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: RowsTiles

    def __str__(self) -> str:
        dtype = "tf32" if self.spec.precision == "tf32" else self.spec.dtype
        return f"{self.name}-{dtype}-{'-'.join(str(self.tiles).split()[1:])}"


def _cases(name: str, text: str, dtypes, shape) -> list[Case]:
    found = []
    for dtype in dtypes:
        spec = ConvSpec.from_text(f"{text} --dtype float32 --precision tf32" if dtype == "tf32" else f"{text} --dtype {dtype}")
        input_shape = (shape[0], spec.in_channels, *shape[1:])
        assert rows_shape_problem(spec, input_shape) is None, (name, rows_shape_problem(spec, input_shape))
        found += [Case(name, spec, input_shape, t) for t in rows_candidates(spec)]
    return found


BOTH = ("bfloat16", "float16")
CASES = (
    _cases("k3", "3x3x3 --cin 3 --cout 64", BOTH, (2, 18, 11, 32))              # oh 9: a last chunk of 1 row
    + _cases("k3-pad1x1x0", "3x3x3 --cin 3 --cout 64 --padding 1x1x0", ["bfloat16"], (2, 16, 13, 24))
    + _cases("k3-pad2x0x0-nobias", "3x3x3 --cin 3 --cout 64 --padding 2x0x0 --no-bias", ["float16"], (1, 7, 10, 40))
    + _cases("k1", "1x1x1 --cin 3 --cout 64", ["bfloat16"], (2, 5, 5, 16))       # one k16 step, 4 rows of zeros
    + _cases("k2x4x3-rows32", "2x4x3 --cin 4 --cout 64", ["bfloat16"], (2, 9, 12, 64))  # 32 input rows: 8 steps
    + _cases("k3x1x3", "3x1x3 --cin 2 --cout 64", ["float16"], (2, 6, 8, 48))
    + _cases("cout32", "3x3x3 --cin 1 --cout 32", ["bfloat16"], (2, 10, 10, 24))
    + _cases("cout128", "3x3x3 --cin 2 --cout 128", ["bfloat16"], (2, 10, 10, 40))
    + _cases("narrow-row", "3x3x3 --cin 3 --cout 64", ["bfloat16"], (2, 10, 6, 16))  # ow 14: the second half idle
    + _cases("many-chunks", "3x3x3 --cin 3 --cout 64", ["bfloat16"], (4, 34, 42, 56))
    # tf32: K with the taps unpadded, one per-lane offset per (8 s) mod kw, float32 rows and outputs
    + _cases("k3", "3x3x3 --cin 3 --cout 64", ["tf32"], (2, 18, 11, 32))
    + _cases("k3-pad1x1x0-nobias", "3x3x3 --cin 3 --cout 64 --padding 1x1x0 --no-bias", ["tf32"], (2, 16, 13, 28))
    + _cases("k1", "1x1x1 --cin 3 --cout 64", ["tf32"], (2, 5, 5, 12))
    + _cases("k2x4x3-rows24", "2x4x3 --cin 3 --cout 64", ["tf32"], (2, 9, 12, 48))
    + _cases("k3x1x3-cout32", "3x1x3 --cin 2 --cout 32", ["tf32"], (2, 6, 8, 40))
    + _cases("cout128", "3x3x3 --cin 2 --cout 128", ["tf32"], (2, 10, 10, 40))
    + _cases("narrow-row", "3x3x3 --cin 3 --cout 64", ["tf32"], (2, 10, 6, 16))
    + _cases("many-chunks", "3x3x3 --cin 3 --cout 64", ["tf32"], (3, 34, 42, 64))
)
SEED_B = WORKLOADS["seed-b"]
SEED_B_SPECS = [SEED_B.spec.model_copy(update={"dtype": dtype}) for dtype in BOTH] + [
    SEED_B.spec.model_copy(update={"precision": "tf32"})]
WORKLOAD = [Case("seed-b", spec, SEED_B.input_shape, t) for spec in SEED_B_SPECS for t in rows_candidates(spec)]



@pytest.fixture(scope="module")
def kernels(dispatcher):
    return build_both_ways(dispatcher, render_rows, CASES + WORKLOAD)


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rows_kernel_matches_torch(kernels, case: Case, sized: bool):
    run_and_check(kernels[(str(case), sized)], case)


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
@pytest.mark.parametrize("case", WORKLOAD, ids=str)
def test_every_seed_b_candidate_matches_torch(kernels, case: Case, sized: bool):
    run_and_check(kernels[(str(case), sized)], case)


def test_an_input_the_template_does_not_take_is_refused_by_the_launcher(kernels):
    """w = 20 is not a multiple of 8: the launcher returns an error, never a wrong result."""
    case = CASES[0]
    assert_refused(kernels[(str(case), False)], case.spec, (1, 3, 18, 11, 20))


def test_a_kernel_built_for_one_size_refuses_another(kernels):
    """The case's sized kernel on an input the template takes, of another size: an error, not a wrong result."""
    case = CASES[0]
    d, h, w = case.input_shape[2:]
    assert_refused(kernels[(str(case), True)], case.spec, (1, 3, d, h, w + 8))


@pytest.mark.parametrize("sized", SIZES.values(), ids=SIZES)
def test_an_empty_batch_launches_nothing(kernels, sized: bool):
    case = CASES[0]
    launch_empty(kernels[(str(case), sized)], case.spec, case.input_shape)


def test_autotuning_seed_b_times_the_row_candidates_and_keeps_a_winner(tmp_path):
    spec = SEED_B.spec.model_copy(update={"dtype": "bfloat16"})
    shape = (4, 3, 64, 64, 64)  # seed-b's sizes with fewer samples: the float64 check stays quick
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    x, weight, bias = random_inputs(spec, shape)
    out = run(tuning, x, weight, bias)
    plan = tuning.plan(x, weight, bias, 1, 0, 1, 1)
    ref = F.conv3d(x.double(), weight.double(), bias.double())
    assert plan.tuned and relative_error(out, ref) <= tolerance(spec)
    choice = tuning.tuner.lookup(spec, shape, Target.for_device(), torch.cuda.get_device_name())
    rows = {str(t) for t in rows_candidates(spec)}
    assert rows <= set(choice.timings_ms) and not rows & set(choice.dropped), choice.dropped
    print(f"\n{spec.tag}: winner {choice.label}; " + timings_line(choice))
