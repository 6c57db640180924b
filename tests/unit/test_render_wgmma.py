"""The wgmma row-product template: what it serves and on which inputs, on which GPUs the tuner
offers it, its geometry, the kernels built for one input size, and nvcc compiling every candidate
of seed-a (for any size and for seed-a's) and a few edge specs alone for sm_90 (built as sm_90a)
without spills in reach of its loop, and refusing to compile for sm_80 (no GPU, no torch headers)."""
import pytest

from conv3d_codegen.autotune import Tuner, candidates, render_tiles
from conv3d_codegen.build import KernelBuildError, Target, compile_cubin
from conv3d_codegen.render_wgmma import (BLOCK_STRIDE, WgmmaTiles, geometry, out_pitch, render_wgmma, supports_wgmma,
                                         wgmma_candidates, wgmma_shape_problem)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

SEED_A = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"})
R4 = WgmmaTiles(r=4, blocks_per_sm=2)


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", None),
    ("3x5x7 --cin 3 --cout 64 --dtype float16 --padding 1x2x0", None),
    ("4x4x5 --cin 3 --cout 16 --dtype bfloat16", None),                          # 48 input rows
    ("3x5x7 --cin 3 --cout 64", "dtype float32"),
    ("3x5x7 --cin 3 --cout 64 --precision tf32", "dtype float32"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --layout ndhwc", "NCDHW only"),
    ("3x5x7 --cin 4 --cout 64 --groups 2 --dtype bfloat16", "groups=2"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --stride 2", "stride 1 and dilation 1"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --padding 1", "no padding along w"),
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16", "kw=3"),
    ("3x5x6 --cin 3 --cout 64 --dtype bfloat16", "kw=6"),
    ("3x5x9 --cin 3 --cout 64 --dtype bfloat16", "kw=9"),
    ("3x5x7 --cin 3 --cout 128 --dtype bfloat16", "out_channels=128"),
    ("3x5x7 --cin 4 --cout 64 --dtype bfloat16", "60 input rows"),
])
def test_supports_wgmma_gives_the_reason(text, reason):
    found = supports_wgmma(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


@pytest.mark.parametrize("shape, reason", [
    ((16, 3, 64, 64, 64), None),
    ((1, 3, 10, 12, 32), None),
    ((1, 3, 10, 16, 60), "input width 60"),       # not a multiple of 8
    ((1, 3, 10, 16, 72), "output width 66"),      # over 64 positions
    ((1, 3, 10, 13, 64), "output rows of 58"),    # oh * ow = 9 x 58, not a multiple of 8
])
def test_wgmma_shape_problem_names_the_input_it_refuses(shape, reason):
    found = wgmma_shape_problem(SEED_A, R4, shape)
    assert found is None if reason is None else reason in found


def test_an_odd_r_needs_rows_that_fill_16_bytes():
    assert "r * ow" in wgmma_shape_problem(SEED_A, WgmmaTiles(r=3, blocks_per_sm=1), (1, 3, 10, 12, 64))


def test_the_tuner_offers_wgmma_tiles_on_sm90_only():
    tiles = wgmma_candidates(SEED_A)
    assert tiles == [R4, WgmmaTiles(r=8, blocks_per_sm=1)]
    for arch in ("sm_90", "sm_90a"):
        assert set(tiles) <= set(candidates(SEED_A, arch))
    for arch in ("sm_80", "sm_86", "sm_100", None):
        assert not set(tiles) & set(candidates(SEED_A, arch))
    assert Tuner.candidate_problem(SEED_A, R4, (2, 3, 64, 64, 64)) is None
    assert "input width 60" in Tuner.candidate_problem(SEED_A, R4, (2, 3, 64, 64, 60))


def test_tiles_are_checked_against_the_spec_and_the_input():
    assert "168 registers" in WgmmaTiles(r=4, blocks_per_sm=3).problem(SEED_A)
    assert "exceed" in WgmmaTiles(r=16, blocks_per_sm=1).problem(SEED_A)
    assert "do not fit an SM" in wgmma_shape_problem(SEED_A, WgmmaTiles(r=8, blocks_per_sm=2), (1, 3, 10, 16, 64))
    with pytest.raises(ValueError, match="does not serve this spec: kw=3"):
        render_wgmma(WORKLOADS["seed-b"].spec.model_copy(update={"dtype": "bfloat16"}))


def test_the_geometry_of_seed_a():
    g = geometry(SEED_A, R4, ow=58)
    assert (g.rows, g.steps, g.n) == (45, 23, 64)             # 45 input rows x 8 taps -> 23 k16 steps
    assert g.staged == 8 * 9 and g.row_bytes == 8 * BLOCK_STRIDE
    assert g.hankel_bytes == 73 * 8 * 144                       # and one zero row
    assert g.out_pitch == 4 * 116 and g.shared_bytes == 73 * 1152 + 64 * 464
    assert 2 * (g.shared_bytes + 1024) <= 228 * 1024            # two blocks an SM
    assert geometry(SEED_A, R4, ow=10).n == 16 and geometry(SEED_A, R4).n == 64


@pytest.mark.parametrize("r, ow", [(4, 58), (8, 58), (4, 64), (8, 10), (3, 16)])
def test_the_staged_output_pitch_spreads_the_stores_over_the_banks(r, ow):
    """Lanes (g, t) store word g * pitch + t: distinct banks when the pitch is 4 modulo 8 words."""
    pitch = out_pitch(r, ow)
    assert pitch % 16 == 0 and pitch >= 2 * r * ow
    assert len({(g * pitch // 4 + t) % 32 for g in range(8) for t in range(4)}) == 32


def test_a_kernel_for_one_input_size():
    any_size, sized = render_wgmma(SEED_A, R4), render_wgmma(SEED_A, R4, size=(64, 64, 64))
    assert sized.name == any_size.name + "_64x64x64" and sized.identity != any_size.identity
    assert "m64n64k16.f32.bf16.bf16" in sized.body and "d = 64; h = 64; w = 64; od = 62; oh = 60; ow = 58;" in sized.body
    assert "if (d != 64 || h != 64 || w != 64)" in sized.body and "d != 64" not in any_size.body
    narrow = render_wgmma(SEED_A, R4, size=(8, 8, 16))
    assert "m64n16k16" in narrow.body and "m64n64k16" not in narrow.body
    fp16 = render_wgmma(SEED_A.model_copy(update={"dtype": "float16"}), R4, size=(64, 64, 64))
    assert "m64n64k16.f32.f16.f16" in fp16.body
    assert render_tiles(SEED_A, R4, size=(64, 64, 64)).body == sized.body


def test_target_builds_sm90_as_sm90a():
    assert "-gencode=arch=compute_90a,code=sm_90a" in Target.for_arch("sm_90").flags
    assert "-gencode=arch=compute_80,code=sm_80" in Target.for_arch("sm_80").flags


def _sources():
    found = [render_wgmma(SEED_A, t, size=size) for t in wgmma_candidates(SEED_A) for size in (None, (64, 64, 64))]
    found += [render_wgmma(ConvSpec.from_text(text), tiles, size=size) for text, tiles, size in [
        ("3x5x7 --cin 3 --cout 64 --dtype float16 --padding 1x2x0 --no-bias", R4, (6, 12, 64)),
        ("4x4x5 --cin 3 --cout 64 --dtype bfloat16", WgmmaTiles(r=8, blocks_per_sm=1), (6, 11, 48)),  # 48 rows
        ("1x3x5 --cin 1 --cout 16 --dtype float16 --no-bias", R4, (3, 6, 24)),                        # N = 24
        ("3x5x7 --cin 2 --cout 40 --dtype bfloat16", R4, None),
    ]]
    return found


@pytest.fixture(scope="module")
def reports():
    return compile_all([(source, SM90) for source in _sources()])


# ptxas's registers at two blocks an SM (255 a thread): the weights and two accumulator sets fill them,
# and the setup (the weights' gather) may spill a few bytes; the loop over chunks must not need more.
SPILL_BYTES = 64


def test_every_variant_compiles_for_sm90a_within_its_registers(reports):
    for source, target, report in reports:
        where = f"{source.name} {source.params['tiles']} for {target.arch}: {report}"
        assert report.registers <= 255, where
        assert max(report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes) <= SPILL_BYTES, where


def test_it_refuses_to_compile_for_other_gpus():
    with pytest.raises(KernelBuildError, match="build it for sm_90a"):
        compile_cubin(render_wgmma(SEED_A, R4), SM80)
