"""The tensor-core template: guards, names, the K order, and nvcc compiling every variant alone
for sm_90 and sm_80 without spills (no GPU, no torch headers)."""
import json
import re
import subprocess
from collections import Counter

import pytest

from conv3d_codegen.build import kernel_key, nvcc_path
from conv3d_codegen.render_mma import (MmaTiles, SharedPlan, _mask_bits, _plan, _steps, default_mma_tiles,
                                       k_layout, mma_candidates, render_mma, supports_mma)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

SEED_A = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"})
SEED_B = WORKLOADS["seed-b"].spec.model_copy(update={"dtype": "bfloat16"})


def tf32(spec: ConvSpec) -> ConvSpec:
    return spec.model_copy(update={"dtype": "float32", "precision": "tf32"})


def ieee(spec: ConvSpec) -> ConvSpec:
    return spec.model_copy(update={"dtype": "float32", "precision": "ieee"})


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 3 --cout 64", None),                                               # float32: 3xTF32
    ("3x3x3 --cin 64 --cout 64 --padding 1", "up to 512 (float32 accuracy); here K = 1728"),
    ("9x9x9 --cin 1 --cout 8 --dtype bfloat16", "no block of the 1 input channels per group"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", None),
    ("3x5x7 --cin 3 --cout 64 --precision tf32", None),
    ("3x3x3 --cin 64 --cout 64 --groups 64 --padding same --dtype float16", None),  # depthwise
    ("3x3x3 --cin 64 --cout 64 --padding 1 --precision tf32", None),                 # K walked in a loop
])
def test_supports_mma_gives_the_reason(text, reason):
    found = supports_mma(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_supports_mma_refuses_layouts_other_than_ncdhw():
    # model_copy does not validate: stands in for a layout value ConvSpec does not take yet
    found = supports_mma(SEED_A.model_copy(update={"layout": "ndhwc"}))
    assert found is not None and "'ndhwc'" in found and "NCDHW" in found


def test_render_mma_refuses_what_it_does_not_serve():
    with pytest.raises(ValueError, match="tensor-core template does not serve this spec: float32"):
        render_mma(ConvSpec.from_text("3x3x3 --cin 64 --cout 8"))  # 3xTF32 up to K = 512


def test_names_are_readable_and_params_name_the_tiles():
    source = render_mma(SEED_A)
    assert source.name == "conv3d_fwd_mma_k3x5x7_s1_p0_d1_g1_ci3_co64_bf16"
    assert render_mma(tf32(SEED_A)).name == "conv3d_fwd_mma_k3x5x7_s1_p0_d1_g1_ci3_co64_tf32"
    assert source.arg_names == ("n", "d", "h", "w", "od", "oh", "ow")
    assert source.params["tiles"] == str(default_mma_tiles(SEED_A))
    assert source.params["k"].startswith("315 -> 368 columns")
    text = source.text("spec=abc")
    banner = text[: text.index("#include")]
    assert "template:  conv3d_fwd_mma.cu.j2" in banner and "cache key: spec=abc" in banner
    spec_line = next(line for line in banner.splitlines() if line.startswith("// spec:"))
    assert ConvSpec(**json.loads(spec_line.split(":", 1)[1])) == SEED_A


def test_wide_offsets_are_a_separate_kernel():
    narrow, wide = render_mma(SEED_A), render_mma(SEED_A, wide=True)
    assert "using index_t = int;" in narrow.body and "using index_t = long long;" in wide.body
    assert wide.name == narrow.name + "_i64" and wide.params["offsets"] == "64-bit"


def test_a_kernel_for_one_input_size():
    for tiles in (default_mma_tiles(SEED_A), shared(SEED_A)):
        sized, any_size = render_mma(SEED_A, tiles, size=(64, 64, 64)), render_mma(SEED_A, tiles)
        assert sized.name == any_size.name + "_64x64x64" and sized.params["input size"] == "64x64x64 only"
        assert sized.identity == SEED_A.canonical_json() + " size=64x64x64"
        assert "d = 64; h = 64; w = 64; od = 62; oh = 60; ow = 58;" in sized.body
        assert "if (d != 64 || h != 64 || w != 64)" in sized.body  # the launcher refuses other sizes
        assert "\n  tiles_per_n = (" in sized.body and "\n  tiles_per_n = (" not in any_size.body
        assert kernel_key(sized, SM90) != kernel_key(render_mma(SEED_A, tiles, size=(64, 64, 65)), SM90)
    assert "/ 58u" in render_mma(SEED_A, size=(64, 64, 64)).body  # divisions by constants, not by Divisor


def test_tiles_are_in_the_body_so_they_change_the_key():
    a, b = mma_candidates(SEED_A)[:2]
    assert kernel_key(render_mma(SEED_A, a), SM90) != kernel_key(render_mma(SEED_A, b), SM90)
    assert render_mma(SEED_A, a).identity == render_mma(SEED_A, b).identity == SEED_A.canonical_json()


def test_tiles_are_checked_against_the_spec():
    assert MmaTiles(256, 64, 8, 1).problem(SEED_A) is None
    assert "block_m=200" in MmaTiles(200, 64, 8, 1).problem(SEED_A)
    assert "exceeds the 4 output channels" in MmaTiles(256, 16, 8, 1).problem(
        ConvSpec.from_text("3x3x3 --cin 8 --cout 8 --groups 2 --dtype bfloat16"))
    assert "16 to 64 rows" in MmaTiles(512, 64, 4, 1).problem(SEED_A)  # 128 rows a warp
    assert "1 to 32 warps" in MmaTiles(1024, 64, 16, 4).problem(SEED_A)
    assert "shared memory" in MmaTiles(128, 64, 4, 1, blocks_per_sm=8).problem(tf32(WORKLOADS["wide"].spec))
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_mma(SEED_A, MmaTiles(200, 64, 8, 1))


def test_candidates_are_a_small_valid_space_led_by_the_default():
    for spec in (SEED_A, SEED_B, tf32(SEED_A), tf32(SEED_B), WORKLOADS["wide"].spec.model_copy(update={"dtype": "bfloat16"})):
        found = mma_candidates(spec)
        assert 3 <= len(found) <= 8 and found[0] == default_mma_tiles(spec)
        assert all(t.problem(spec) is None for t in found) and len(set(found)) == len(found)
        assert any(t.a_from == "global" for t in found) and any(t.a_from == "shared" for t in found)


def shared(spec: ConvSpec) -> MmaTiles:
    """The first shared-A candidate of `spec`."""
    return next(t for t in mma_candidates(spec) if t.a_from == "shared")


def test_shared_tiles_are_checked_and_named():
    tiles = MmaTiles(256, 64, 8, 1, 2, "shared", 64)
    assert tiles.problem(SEED_A) is None and tiles.lines == 4
    assert str(tiles).endswith("blocks_per_sm=2 a_from=shared tile_w=64")
    assert str(MmaTiles(256, 64, 8, 1, 2)) == "block_m=256 block_n=64 warps_m=8 warps_n=1 blocks_per_sm=2"
    assert "tile_w=48" in MmaTiles(256, 64, 8, 1, 2, "shared", 48).problem(SEED_A)
    assert "tile_w=128" in MmaTiles(64, 64, 4, 1, 2, "shared", 128).problem(SEED_A)
    assert "applies to a_from='shared' only" in MmaTiles(256, 64, 8, 1, 2, "global", 64).problem(SEED_A)
    # records of older versions (no a_from, tile_w) still load: the new fields have defaults
    assert MmaTiles(**{"block_m": 256, "block_n": 64, "warps_m": 8, "warps_n": 1, "blocks_per_sm": 2}).a_from == "global"


@pytest.mark.parametrize("text, seg, copies, pairs", [
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", 63 + 7 + 1, 2, True),       # pairs; odd positions read the copy
    ("3x5x7 --cin 3 --cout 64 --stride 2 --dtype bfloat16", 126 + 7 + 1, 1, True),  # even stride: pairs all even
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16", 63 + 3 + 1, 1, False),      # span 4: one load an element
    ("3x5x7 --cin 3 --cout 64 --dilation 2 --dtype float16", 63 + 14 + 1, 1, False),  # taps 2 apart
    ("3x5x7 --cin 3 --cout 64 --precision tf32", 63 + 7 + 1, 1, False),
])
def test_staging_layout(text, seg, copies, pairs):
    spec = ConvSpec.from_text(text)
    plan = _plan(spec, MmaTiles(256, 64, 8, 1, 1, "shared", 64))
    staging = plan.staging
    assert (staging.seg, staging.copies, staging.pairs) == (seg, copies, pairs)
    assert staging.rows == plan.ci_per_body * spec.kernel_size[0] * spec.kernel_size[1]
    assert staging.seg_pitch % 2 == 0 and staging.row_pitch % 2 == 0
    if copies == 2:  # the copy sits 16 banks over, so lanes of both parities read without conflicts
        assert staging.copy_offset % 64 == 32 and staging.copy_offset >= 4 * staging.seg_pitch
    assert plan.c_bytes >= staging.bytes and plan.total <= 163 * 1024


def test_shared_a_needs_no_global_gather():
    body = render_mma(SEED_A, MmaTiles(256, 64, 8, 1, 2, "shared", 64)).body
    assert "lds32<" in body and "(lds32<0>(sa) & keep);  // ci=0 kd=0 kh=0 kw=2t, +1" in body
    assert "const elem_t* row[MT][2]" not in body and "operand(p + x_hw + 2 * x_w)" in body  # the stage's row
    assert len(re.findall(r"if \(in_order\(n\)\) \{  // K step \d+", body)) == 23
    tf = render_mma(tf32(SEED_B), shared(tf32(SEED_B))).body
    assert "(lane_kw < 3 ? lds32<0>(sa) : 0u)" in tf  # taps past kw read the stage but count zero
    assert render_mma(SEED_A, shared(SEED_A)).params["a"].startswith("staged in shared memory: 4 lines x 64")
    assert render_mma(SEED_A).params["a"] == "gathered per element from global memory"


def test_shared_a_where_k_is_walked_in_a_loop_keeps_its_registers():
    wide = WORKLOADS["wide"].spec.model_copy(update={"dtype": "bfloat16"})
    for tiles in mma_candidates(wide):
        plan = _plan(wide, tiles)
        assert isinstance(plan, SharedPlan) and plan.bodies == 16
        if tiles.a_from == "shared" and not plan.resident:
            assert tiles.max_registers >= 168


@pytest.mark.parametrize("text, span, segments, steps, bodies", [
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", 8, 45, 23, 1),
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16", 4, 27, 7, 1),
    ("3x5x7 --cin 3 --cout 64 --precision tf32", 8, 45, 45, 1),
    ("3x3x3 --cin 64 --cout 64 --padding 1 --dtype bfloat16", 4, 576, 144, 16),
])
def test_k_is_cut_into_segments_along_w(text, span, segments, steps, bodies):
    spec = ConvSpec.from_text(text)
    layout = k_layout(spec)
    assert (layout.span, layout.segments, layout.steps) == (span, segments, steps)
    assert _plan(spec, default_mma_tiles(spec)).bodies == bodies


GATHER_SPECS = ["3x5x7 --cin 3 --cout 64 --dtype bfloat16", "3x3x3 --cin 3 --cout 64 --precision tf32",
                "3x3x9 --cin 2 --cout 16 --padding 0x1x4 --dtype float16", "1x1x1 --cin 16 --cout 24 --dtype bfloat16",
                "3x3x3 --cin 64 --cout 64 --padding 1 --dtype bfloat16", "3x3x3 --cin 32 --cout 64 --precision tf32"]


@pytest.mark.parametrize("text", GATHER_SPECS)
def test_the_lanes_gather_every_tap_exactly_once(text):
    """Over all steps, bodies and the four lanes of a quad, the A elements cover each tap
    (ci, kd, kh, kw) of a group once; every other element is a zero."""
    spec = ConvSpec.from_text(text)
    layout = k_layout(spec)
    plan = _plan(spec, default_mma_tiles(spec))
    steps = _steps(spec, layout, _mask_bits(spec, layout)[3], plan.body_steps)
    kd_, kh_, kw_ = spec.kernel_size
    rows_per_body = plan.ci_per_body * kd_ * kh_
    seen = Counter()
    for body in range(plan.bodies):
        for taps in steps:
            for tap in taps:
                for t in range(4):
                    kw = tap.kw + layout.lane_kw * t
                    if tap.row is not None and kw < kw_:
                        seen[(body * rows_per_body + tap.row, kw)] += 1
    every = {(row, kw) for row in range(spec.in_per_group * kd_ * kh_) for kw in range(kw_)}
    assert set(seen) == every and set(seen.values()) == {1}


def test_the_emitted_source_names_its_taps_and_includes_no_torch():
    body = render_mma(SEED_A).body
    assert "#include <torch" not in body and "ATen" not in body
    assert "operand(p + x_hw + 2 * x_w),  // ci=0 kd=1 kh=2 kw=2t" in body
    assert len(re.findall(r"if \(in_order\(n\)\) \{  // K step \d+", body)) == 23
    assert len(re.findall(r"// ci=\d kd=\d kh=\d kw=", body)) == 2 * 45  # two taps of each segment; the rest is padding
    assert "static_assert(weights_follow_the_gather_order()" in body
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in body
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in render_mma(tf32(SEED_A)).body
    assert "split_tf32" not in render_mma(tf32(SEED_A)).body


def test_float32_ieee_splits_each_operand_into_two_tf32_parts_and_runs_three_mmas():
    source = render_mma(ieee(SEED_A))
    assert "3xTF32" in source.params["mma"]
    assert source.body.count("split_tf32(") >= 4 and "__float_as_uint(__ldg(p))" in source.body
    assert all(t.blocks_per_sm * t.threads <= 256 for t in mma_candidates(ieee(SEED_A)))  # 8 warps an SM: registers
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in render_mma(
        SEED_A.model_copy(update={"dtype": "float16"})).body


def test_tiles_of_blocks_that_share_an_sm_store_by_bulk_copies_on_sm90_only():
    two, one = (next(t for t in mma_candidates(SEED_B) if t.a_from == "global" and t.blocks_per_sm == n) for n in (2, 1))
    body = render_mma(SEED_B, two).body
    guarded = body.split("#if __CUDA_ARCH__ >= 900\n      if (whole_vectors) {", 1)
    assert len(guarded) == 2 and "cp.async.bulk.global.shared::cta.bulk_group" in body
    assert "bulk_store(y + ((ni * CO + co0 + FIRST + c) * odhw + s0), cs + c * C_PITCH, bytes);" in guarded[1]
    assert "__stcs(" in guarded[1]  # the warps' stores: sm_80, and outputs without whole 16-byte vectors
    assert "cp.async.bulk" not in render_mma(SEED_B, one).body
    assert "cp.async.bulk" not in render_mma(SEED_B, shared(SEED_B)).body


def test_only_padded_dimensions_and_past_kw_taps_are_masked():
    _, _, w_bits, bits = _mask_bits(SEED_A, k_layout(SEED_A))
    assert w_bits == [(1, 0)] and len(bits) == 1   # kw = 1 + 2t passes kw = 6 for t = 3
    padded = ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --padding 0x1x0 --dtype bfloat16")
    d_bits, h_bits, w_bits, _ = _mask_bits(padded, k_layout(padded))
    assert d_bits == [] and len(h_bits) == 3 and w_bits == [(0, 3)]  # span 4: kw = 3 for t = 3


# Compiled for sm_90 and sm_80: every kernel shape, dtype and geometry feature the template
# specializes on, K unrolled and K in a loop, resident and streamed weights.
MATRIX = [
    "3x5x7 --cin 3 --cout 64 --dtype bfloat16",
    "3x3x3 --cin 3 --cout 64 --dtype float16",
    "1x1x1 --cin 16 --cout 24 --dtype bfloat16",
    "5x3x3 --cin 32 --cout 64 --stride 2 --padding 1 --precision tf32",        # loop, streamed
    "3x3x3 --cin 8 --cout 8 --stride 1x2x3 --padding 2x1x0 --dilation 2 --no-bias --dtype bfloat16",
    "3x3x3 --cin 64 --cout 64 --groups 64 --padding same --dtype bfloat16",   # depthwise
    "3x3x3 --cin 16 --cout 32 --groups 2 --padding 1 --precision tf32",
    "2x4x3 --cin 4 --cout 4 --padding same --dilation 1x3x2 --dtype float16",
    "3x3x3 --cin 64 --cout 64 --padding 1 --dtype bfloat16",                  # 'wide': loop, streamed
    "3x5x7 --cin 3 --cout 64 --padding same --precision tf32",
    "3x3x3 --cin 3 --cout 40 --padding 1 --dtype bfloat16",                   # an odd number of n8 tiles
]


SEEDS = (SEED_A, SEED_B, tf32(SEED_A), tf32(SEED_B), ieee(SEED_A), ieee(SEED_B))


def _sources():
    both = [render_mma(ConvSpec.from_text(t)) for t in MATRIX] + [render_mma(SEED_A, wide=True)]
    both += [render_mma(spec, shared(spec)) for spec in map(ConvSpec.from_text, MATRIX)]
    both += [render_mma(SEED_A, shared(SEED_A), wide=True)]
    only_sm90 = [render_mma(spec, tiles) for spec in SEEDS for tiles in mma_candidates(spec)[1:]]
    # Built for seed-a's size (as the dispatcher builds them): the default tiles, and shared A.
    both += [render_mma(spec, tiles, size=(64, 64, 64)) for spec in SEEDS for tiles in (None, shared(spec))]
    return [(s, SM90) for s in both + only_sm90] + [(s, SM80) for s in both]


@pytest.fixture(scope="module")
def reports():
    return compile_all(_sources())


@pytest.mark.slow
def test_every_variant_compiles_for_sm90_and_sm80_without_spills(reports):
    assert len(reports) == 2 * (2 * (len(MATRIX) + 1) + 2 * len(SEEDS)) + sum(len(mma_candidates(s)) - 1 for s in SEEDS)
    for source, target, report in reports:
        where = (source.name, source.params["tiles"], target.arch, report)
        assert report.registers > 0, where
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, where


DIVISOR_CHECK = r"""
#include <cstdio>
#include <cstdint>
%s
// Every divisor below 4096 and a spread of larger ones, against numerators at the edges (around
// multiples of d, 2^30, 2^31 - 1) and a pseudo-random spread: prints the failures and their count.
int main() {
  long long failures = 0;
  uint32_t state = 12345;
  auto check = [&](int n, int d, const Divisor& by) {
    if (n < 0) return;
    if (by.div(n) != n / d && failures++ < 10) printf("%%d / %%d: %%d, not %%d\n", n, d, by.div(n), n / d);
  };
  for (long long d = 1; d < (1LL << 31); d = d < 4096 ? d + 1 : d * 3 + 1) {
    const Divisor by(static_cast<int>(d));
    const long long edges[] = {0, 1, d - 1, d, d + 1, 62 * d - 1, 62 * d, (1LL << 30) - 1, 1LL << 30,
                               (1LL << 31) / d * d - 1, (1LL << 31) / d * d, (1LL << 31) - 1};
    for (long long n : edges) if (n < (1LL << 31)) check(static_cast<int>(n), static_cast<int>(d), by);
    for (int i = 0; i < 256; ++i) {
      state = state * 1664525u + 1013904223u;
      check(static_cast<int>(state >> 1), static_cast<int>(d), by);
    }
  }
  printf("%%lld failures\n", failures);
  return failures != 0;
}
"""


def test_division_by_a_divisor_known_at_launch_is_exact(tmp_path):
    # The kernel's own Divisor (from the emitted source), compiled for the host with nvcc and run.
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    body = render_mma(SEED_B).body
    struct = re.search(r"^struct Divisor \{.*?^\};$", body, re.S | re.M).group(0)
    (tmp_path / "divisor.cu").write_text(DIVISOR_CHECK % struct)
    subprocess.run([nvcc, "-std=c++17", "-o", str(tmp_path / "divisor"), str(tmp_path / "divisor.cu")],
                   check=True, capture_output=True)
    run = subprocess.run([str(tmp_path / "divisor")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.endswith("0 failures\n"), run.stdout


def test_positions_become_rows_by_multiplying_in_32_bits_and_dividing_in_64():
    narrow, wide = render_mma(SEED_B).body, render_mma(SEED_B, wide=True).body
    signed = "static_cast<int>(s % ow)"
    assert "by_ow.div(s)" in narrow and signed not in narrow
    assert signed in wide and "by_ow.div(s)" not in wide  # positions may reach 2^31 there
