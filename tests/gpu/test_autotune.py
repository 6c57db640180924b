"""The autotuner on the GPU: it verifies and times candidates, keeps the winner, and every
kernel it can pick computes the right result."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import strict
from conv3d_codegen.autotune import TORCH, Tuner, candidates, render_tiles
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render import default_tiles
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

SPEC = ConvSpec.from_text("3x3x3 --cin 4 --cout 16 --padding 1")
SHAPE = (2, 4, 17, 18, 35)


def test_tuning_keeps_a_verified_winner_that_later_processes_use(tmp_path):
    tuning = Dispatcher(KernelCache(tmp_path), autotune=True)
    x, weight, bias = random_inputs(SPEC, SHAPE)
    out = run(tuning, x, weight, bias, padding=1)
    plan = tuning.plan(x, weight, bias, 1, 1, 1, 1)
    assert plan.tuned and relative_error(out, F.conv3d(x.double(), weight.double(), bias.double(), padding=1)) <= 1e-5
    choice = tuning.tuner.lookup(SPEC, SHAPE, Target.for_device(), torch.cuda.get_device_name())
    assert set(choice.timings_ms) == {str(t) for t in candidates(SPEC, Target.for_device().arch)} | {TORCH}
    fastest = min(choice.timings_ms.values())
    assert choice.timings_ms[choice.label] == fastest or (choice.winner is None and fastest >= 0.98 * choice.timings_ms[TORCH])

    later = Dispatcher(KernelCache(tmp_path), autotune=False)
    reused = later.plan(x, weight, bias, 1, 1, 1, 1)
    assert reused.tuned and later.cache.stats.builds == 0
    assert reused.route == TORCH if choice.winner is None else reused.kernel.source.params["tiles"] == choice.label


def test_candidates_that_cannot_serve_the_shape_are_dropped_with_the_reason(tmp_path):
    dispatcher = Dispatcher(KernelCache(tmp_path))
    x, weight, bias = random_inputs(SPEC, (1, 4, 9, 9, 10))  # output width 10
    good = default_tiles(SPEC)
    too_wide = dataclasses.replace(good, wt=16)
    odd = dataclasses.replace(good, cot=3)
    choice = dispatcher.tuner.tune(SPEC, x, weight, bias, Target.for_device(),
                                   lambda: F.conv3d(x, weight, bias, padding=1), tiles=[good, too_wide, odd])
    assert "output width 10 < wt" in choice.dropped[str(too_wide)]
    assert "cot=3 does not divide" in choice.dropped[str(odd)]
    assert choice.label in (str(good), TORCH)


def test_strict_mode_accepts_torch_chosen_by_timing(tmp_path):
    dispatcher = Dispatcher(KernelCache(tmp_path))
    x, weight, bias = random_inputs(SPEC, SHAPE)
    name, key = dispatcher.tuner.record_id(SPEC, SHAPE, Target.for_device(), torch.cuda.get_device_name())
    dispatcher.cache.write_record(name, key, {"winner": TORCH, "tiles": None, "timings_ms": {TORCH: 0.1},
                                              "dropped": {}})
    with strict():
        plan = dispatcher.plan(x, weight, bias, 1, 1, 1, 1)
    assert plan.route == TORCH and plan.tuned and not plan.fallback


CANDIDATE_SPECS = [(w.spec.model_copy(update={"dtype": dt}), (1, w.spec.in_channels, 11, 13, 41))  # ow >= 16 = widest wt
                   for w in WORKLOADS.values() for dt in ("float32", "bfloat16")]
# The row-product templates take no input 41 wide (a multiple of 8, an even ow): seed-b and seed-a on one they take.
CANDIDATE_SPECS.append((WORKLOADS["seed-b"].spec.model_copy(update={"dtype": "bfloat16"}), (1, 3, 10, 12, 32)))
CANDIDATE_SPECS.append((WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"}), (1, 3, 10, 12, 32)))
# The rotating-slots template (sm_90) takes an even width: pointwise (64 -> 128 channels, N = 128) on one.
CANDIDATE_SPECS.append((WORKLOADS["pointwise"].spec.model_copy(update={"dtype": "bfloat16"}), (1, 64, 5, 6, 40)))


@pytest.fixture(scope="module")
def candidate_kernels(dispatcher):
    """Every candidate of every spec below that the tuner may pick for its shape, built at once for the shape's size,
    as the tuner builds them."""
    arch = Target.for_device().arch
    jobs = [(spec, shape, tiles) for spec, shape in CANDIDATE_SPECS for tiles in candidates(spec, arch)
            if Tuner.candidate_problem(spec, tiles, shape) is None]
    built = dispatcher.loader.load_many([render_tiles(spec, tiles, size=shape[2:]) for spec, shape, tiles in jobs],
                                        Target.for_device())
    assert not [k for k in built if isinstance(k, Exception)]
    return {(spec.canonical_json(), shape, str(tiles)): kernel for (spec, shape, tiles), kernel in zip(jobs, built)}


@pytest.mark.parametrize("spec, shape", CANDIDATE_SPECS, ids=lambda v: v.tag if isinstance(v, ConvSpec) else "")
def test_every_candidate_the_autotuner_can_pick_matches_torch(candidate_kernels, spec, shape):
    x, weight, bias = random_inputs(spec, shape)
    ref = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **spec.functional_args())
    for tiles in candidates(spec, Target.for_device().arch):
        if Tuner.candidate_problem(spec, tiles, shape) is not None:
            continue  # the tuner drops these tiles for this shape, so it cannot pick them
        kernel = candidate_kernels[(spec.canonical_json(), shape, str(tiles))]
        out = torch.full(ref.shape, float("nan"), dtype=x.dtype, device=x.device)
        kernel(x, weight, bias, out, launch_args(spec, x.shape))
        assert relative_error(out, ref) <= tolerance(spec), tiles
