"""The rotating-slots template (sm_90a) against torch.nn.functional.conv3d in float64, on fresh random
inputs, with outputs poisoned (NaN) before each run (test_forward_mma's run_and_check: every element
written, the first samples compared), each kernel built for its case's input size. The cases cover
seed-a's and seed-b's dgrad shapes, input heights that are not a multiple of kh (zero rows walked),
an odd number of output planes (a warpgroup with no plane), no padding (output rows before the
first input row's), one output channel, kh 1 (once with a single input row), 128 input channels,
both 16-bit types, blocks that walk several items, 4 to 8 output planes a block, and float32 as
tf32 and as 3xTF32 ('ieee', seed-b's dgrad with one completed-slot buffer a warpgroup), also in
passes of fewer taps along d (seed-a's shape) and with one stage, and tf32 staged by the bulk tensor copy engine
(tma: rows that start 8 bytes into a 16-byte piece, zero planes and rows past the height read as zeros; with two
stages too, and the 16-bit types, whose rows start 0 to 12 bytes into a piece). Skipped, saying
so, on GPUs other than compute capability 9.0. Last, the dgrad of seed-a through autotuning: the
slots candidates are timed beside the others and the kept winner is correct."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.render_slots import SlotsTiles, render_slots
from conv3d_codegen.render_wgmma import HOPPER_ARCHES
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .test_forward_mma import assert_refused, launch_empty, run_and_check, timings_line  # the same checks for every template

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or Target.for_device().arch not in HOPPER_ARCHES,
    reason="the rotating-slots template runs on compute capability 9.0 (H100, H200) only; this GPU is another")


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    tiles: SlotsTiles = SlotsTiles()

    def __str__(self) -> str:
        return f"{self.name}-{'tf32' if self.spec.precision == 'tf32' else self.spec.dtype}"


def _case(name: str, text: str, dtype: str, shape, planes: int = 2, stages: int = 2, tma: bool = False) -> Case:
    """dtype "tf32" is float32 with precision 'tf32'; "float32" is 'ieee' (3xTF32)."""
    spec = ConvSpec.from_text(f"{text} --dtype float32 --precision tf32" if dtype == "tf32" else f"{text} --dtype {dtype}")
    input_shape = (shape[0], spec.in_channels, *shape[1:])
    tiles = SlotsTiles(planes, stages, tma)
    assert tiles.shape_problem(spec, input_shape) is None and tiles.problem(spec) is None, name
    return Case(name + (f"-planes{planes}" if planes != 2 else "") + (f"-stages{stages}" if stages != 2 else "")
                + ("-tma" if tma else ""), spec, input_shape, tiles)


CASES = (
    [_case("dgrad-a", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", dtype, (2, 10, 13, 58)) for dtype in ("bfloat16", "float16")]
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", "bfloat16", (2, 7, 9, 62)),  # 9 output planes
       _case("no-padding", "3x5x7 --cin 32 --cout 3", "float16", (2, 8, 12, 64)),
       _case("cout1-nobias", "3x3x3 --cin 16 --cout 1 --padding 1 --no-bias", "bfloat16", (1, 5, 6, 20)),
       _case("kh1", "1x1x5 --cin 16 --cout 8 --padding 0x0x2", "bfloat16", (2, 3, 4, 30)),
       _case("cin128", "1x3x3 --cin 128 --cout 2 --padding 0x1x1", "float16", (2, 3, 5, 8)),
       _case("cout4", "3x3x5 --cin 48 --cout 4 --padding 1x1x2", "bfloat16", (1, 4, 7, 16)),
       _case("many-items", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "bfloat16", (3, 40, 20, 58)),
       # 300 items: more than an H100 holds blocks, so blocks walk several (and stage the next one's first row); 5 rows an item
       _case("items-per-block", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "bfloat16", (2, 298, 3, 58)),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "float16", (3, 200, 4, 30)),  # 6 rows an item
       # kh 1 and one input row: 2 rows an item (a zero row walked), so the rows staged ahead are the next item's
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1", "bfloat16", (2, 300, 1, 16))]
    # more output planes a block: 4 to 8 (P = 2 to 4 accumulator sets a warpgroup), groups past the output's last plane
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", "bfloat16", (2, 7, 9, 62), planes=p) for p in (4, 6, 8)]
    + [_case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "float16", (3, 200, 4, 30), planes=8),
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1", "bfloat16", (2, 300, 1, 16), planes=6),
       _case("no-padding", "3x5x7 --cin 32 --cout 3", "float16", (2, 8, 12, 64), planes=4)]
    # float32: tf32, and 'ieee' as 3xTF32 (seed-b's with one completed-slot buffer a warpgroup: two do not fit)
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", dtype, (2, 7, 9, 62)) for dtype in ("tf32", "float32")]
    + [_case("kh5-cin16", "3x5x7 --cin 16 --cout 3 --padding 2x4x6", dtype, (2, 10, 13, 58)) for dtype in ("tf32", "float32")]
    + [_case("cin8", "3x3x3 --cin 8 --cout 3 --padding 1", "tf32", (1, 5, 6, 20)),  # one K step of 8
       _case("no-padding", "3x5x7 --cin 16 --cout 3", "float32", (2, 8, 12, 64)),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "tf32", (3, 200, 4, 30), planes=4),
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1 --no-bias", "float32", (2, 300, 1, 16))]
    # float32 where the lists of every tap along d do not fit: seed-a's shape in 3 passes of one tap (bias added once),
    # and seed-b's with 4 planes
    + [_case("dgrad-a", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", dtype, (2, 10, 13, 58)) for dtype in ("tf32", "float32")]
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", dtype, (2, 7, 9, 62), planes=4) for dtype in ("tf32", "float32")]
    + [_case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "float32", (3, 200, 4, 30), planes=4)]  # one pass
    # float32 with one stage (refilled a row ahead, swizzled rows): seed-a's shape in one pass, seed-b's with 4 planes,
    # blocks that walk several items (odd and even rows an item), and kh 1 with one input row (2 rows an item)
    + [_case("dgrad-a", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "tf32", (2, 10, 13, 58), stages=1)]
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", dtype, (2, 7, 9, 62), planes=4, stages=1)
       for dtype in ("tf32", "float32")]
    + [_case("items-per-block", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "tf32", (2, 298, 3, 58), stages=1),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "float32", (3, 200, 4, 30), stages=1),
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1 --no-bias", "tf32", (2, 300, 1, 16), planes=4, stages=1)]
    # tf32 with one stage staged by the copy engine and a producer warp: input planes of a multiple of 4 floats; widths 58,
    # 62 and 30 start every other row 8 bytes into a 16-byte piece; rows past the height (2 of kh 5, 1 of kh 3) and
    # planes outside the input are zeros; blocks that walk several items (the producer runs a row ahead across them)
    + [_case("dgrad-a", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "tf32", (2, 10, 14, 58), stages=1, tma=True),
       _case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", "tf32", (2, 7, 10, 62), planes=4, stages=1, tma=True),
       _case("items-per-block", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "tf32", (2, 298, 2, 58), stages=1, tma=True),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "tf32", (3, 200, 4, 30), stages=1, tma=True),
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1 --no-bias", "tf32", (2, 300, 1, 16), planes=4, stages=1,
             tma=True),
       _case("no-padding", "3x5x7 --cin 16 --cout 3", "tf32", (2, 8, 12, 64), stages=1, tma=True),
       _case("cin8", "3x3x3 --cin 8 --cout 3 --padding 1", "tf32", (1, 5, 6, 20), stages=1, tma=True)]
    # tf32 with two stages by the copy engine (the producer two rows ahead)
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", "tf32", (2, 7, 10, 62), tma=True),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "tf32", (3, 200, 4, 30), planes=4, tma=True)]
    # 16-bit types by the copy engine (two stages, A by 32-bit loads and byte permutes): input planes of a multiple of 8
    # elements; widths 58 and 30 start rows 0, 4, 8 and 12 bytes into a 16-byte piece, 60 0 and 8; rows past the height and
    # planes outside the input are zeros; blocks that walk several items, odd and even rows an item; kh 1 with one input
    # row; 128 channel rows a box; 4 to 8 output planes a block
    + [_case("dgrad-a", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", dtype, (2, 10, 12, 58), tma=True)
       for dtype in ("bfloat16", "float16")]
    + [_case("dgrad-b-odd-planes", "3x3x3 --cin 64 --cout 3 --padding 2", "bfloat16", (2, 7, 8, 60), planes=p, tma=True)
       for p in (2, 4, 8)]
    # seed-a's shape with 4 planes (176 registers of accumulators and fragments: the copy engine's form only)
    + [_case(name, "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "bfloat16", shape, planes=4, tma=True)
       for name, shape in (("dgrad-a", (2, 10, 12, 58)), ("items-per-block", (2, 298, 4, 58)))]
    + [_case("items-per-block", "3x5x7 --cin 64 --cout 3 --padding 2x4x6", "bfloat16", (2, 298, 4, 58), tma=True),
       _case("items-per-block-even-rows", "3x3x3 --cin 16 --cout 3 --padding 1", "float16", (3, 200, 4, 30), tma=True),
       _case("kh1-one-row", "1x1x3 --cin 16 --cout 2 --padding 0x0x1", "bfloat16", (2, 300, 1, 16), planes=6, tma=True),
       _case("no-padding", "3x5x7 --cin 32 --cout 3", "float16", (2, 8, 12, 64), planes=4, tma=True),
       _case("cin128", "1x3x3 --cin 128 --cout 2 --padding 0x1x1", "float16", (2, 3, 5, 8), tma=True),
       _case("cout1-nobias", "3x3x3 --cin 16 --cout 1 --padding 1 --no-bias", "bfloat16", (1, 5, 6, 20), tma=True)]
)


@pytest.fixture(scope="module")
def kernels(dispatcher):
    sources = {str(case): render_slots(case.spec, case.tiles, size=case.input_shape[2:]) for case in CASES}
    return dict(zip(sources, dispatcher.loader.load_many(list(sources.values()), Target.for_device())))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_slots_kernel_matches_torch(kernels, case: Case):
    run_and_check(kernels[str(case)], case)


def test_a_kernel_built_for_one_size_refuses_another(kernels):
    case = CASES[0]
    d, h, w = case.input_shape[2:]
    assert_refused(kernels[str(case)], case.spec, (1, case.spec.in_channels, d, h + 5, w))


def test_an_empty_batch_launches_nothing(kernels):
    case = CASES[0]
    launch_empty(kernels[str(case)], case.spec, case.input_shape)


def test_autotuning_seed_a_dgrad_times_the_slots_candidate_and_keeps_a_winner(tmp_path):
    seed = WORKLOADS["seed-a"]
    spec = dgrad_spec(seed.spec.model_copy(update={"dtype": "bfloat16"}))[0]
    shape = (4, 64, *seed.spec.output_size(*seed.input_shape[2:]))  # grad_out of 4 samples
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    x, weight, bias = random_inputs(spec, shape)
    assert bias is None
    out = run(tuning, x, weight, bias, padding=spec.padding)
    ref = F.conv3d(x.double(), weight.double(), None, padding=spec.padding)  # dgrad has no bias
    assert tuning.plan(x, weight, bias, 1, spec.padding, 1, 1).tuned and relative_error(out, ref) <= tolerance(spec)
    choice = tuning.tuner.lookup(spec, shape, Target.for_device(), torch.cuda.get_device_name())
    assert str(SlotsTiles()) in choice.timings_ms and str(SlotsTiles()) not in choice.dropped, choice.dropped
    print(f"\n{spec.tag}: winner {choice.label}; " + timings_line(choice, 6))
