"""The depthwise template: guards, names, what it unrolls, and nvcc compiling every candidate of
the 'depthwise' workload and a few edge specs alone for sm_90 and sm_80 without spills (no GPU,
no torch headers)."""
import dataclasses
import json
import re

import pytest

from conv3d_codegen.autotune import Tuner, candidates, render_tiles
from conv3d_codegen.build import kernel_key
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.kernel import KernelLoader
from conv3d_codegen.render_depthwise import (DepthwiseTiles, default_depthwise_tiles, depthwise_candidates,
                                             geometry, render_depthwise, supports_depthwise)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

DEPTHWISE = WORKLOADS["depthwise"].spec
DEPTHWISE_BF16 = DEPTHWISE.model_copy(update={"dtype": "bfloat16"})


@pytest.mark.parametrize("text, reason", [
    ("3x3x3 --cin 64 --cout 64 --groups 64 --padding 1", None),
    ("3x3x3 --cin 8 --cout 16 --groups 8 --padding 1", None),                 # channel multiplier 2
    ("3x5x7 --cin 4 --cout 4 --groups 4 --padding same --dtype bfloat16", None),
    ("3x3x3 --cin 4 --cout 4 --groups 4 --stride 2 --dilation 2", None),
    ("3x3x3 --cin 64 --cout 64 --padding 1", "not depthwise: groups=1 with in_channels=64"),
    ("3x3x3 --cin 64 --cout 64 --groups 32 --padding 1", "needs groups == in_channels"),
    ("9x9x9 --cin 4 --cout 4 --groups 4", "729 taps"),
    ("3x3x3 --cin 4 --cout 4 --groups 4 --stride 4", None),                    # the smallest tile
    ("3x3x3 --cin 4 --cout 4 --groups 4 --stride 5", "bytes of shared memory exceed"),
])
def test_supports_depthwise_gives_the_reason(text, reason):
    found = supports_depthwise(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_another_layout_is_refused_with_the_reason():
    if "ndhwc" not in ConvSpec.model_fields["layout"].annotation.__args__:
        pytest.skip("ConvSpec has no layout but 'ncdhw' yet")
    spec = DEPTHWISE.model_copy(update={"layout": "ndhwc"})
    assert "contiguous NCDHW only" in supports_depthwise(spec)


def test_render_refuses_what_it_does_not_serve():
    with pytest.raises(ValueError, match="depthwise template does not serve this spec: not depthwise"):
        render_depthwise(ConvSpec.from_text("3x3x3 --cin 3 --cout 8"))
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_depthwise(DEPTHWISE, DepthwiseTiles(ht=2, wt=3, th=32, tw=32, dt=8))


def test_tiles_are_checked_against_the_spec():
    assert DepthwiseTiles(2, 4, 32, 32, 8).problem(DEPTHWISE) is None
    assert "multiple of 32" in DepthwiseTiles(2, 4, 8, 8, 8).problem(DEPTHWISE)
    assert "must divide" in DepthwiseTiles(3, 4, 32, 32, 8).problem(DEPTHWISE)
    assert "unrolled multiply-adds" in DepthwiseTiles(2, 4, 32, 32, 64).problem(DEPTHWISE)
    assert "live accumulators" in DepthwiseTiles(8, 8, 64, 32, 2).problem(DEPTHWISE)
    assert "elements per thread" in DepthwiseTiles(2, 4, 32, 32, 4).problem(
        ConvSpec.from_text("3x3x3 --cin 4 --cout 4 --groups 4 --stride 2"))
    assert "ahead=3" in DepthwiseTiles(2, 4, 32, 32, 8, ahead=3).problem(DEPTHWISE)


def test_candidates_are_a_small_valid_space_led_by_the_default():
    for text in ("3x3x3 --cin 64 --cout 64 --groups 64 --padding 1", "3x5x7 --cin 4 --cout 4 --groups 4",
                 "5x5x5 --cin 8 --cout 8 --groups 8 --padding 2 --dtype float16",
                 "7x7x7 --cin 2 --cout 2 --groups 2", "3x3x3 --cin 4 --cout 4 --groups 4 --stride 2 --padding 1"):
        spec = ConvSpec.from_text(text)
        found = depthwise_candidates(spec)
        assert 1 <= len(found) <= 6 and found[0] == default_depthwise_tiles(spec), text
        assert all(t.problem(spec) is None for t in found) and len(set(found)) == len(found), text
    assert len(depthwise_candidates(DEPTHWISE)) == 6


def test_the_autotuner_times_the_depthwise_candidates_next_to_the_direct_ones():
    found = candidates(DEPTHWISE)
    assert set(depthwise_candidates(DEPTHWISE)) <= set(found)
    assert any(not isinstance(t, DepthwiseTiles) for t in found)
    assert not any(isinstance(t, DepthwiseTiles) for t in candidates(WORKLOADS["wide"].spec))
    tiles = depthwise_candidates(DEPTHWISE)[1]
    assert render_tiles(DEPTHWISE, tiles).template == "conv3d_fwd_depthwise.cu.j2"


def test_a_depthwise_winner_reads_back_from_its_record(tmp_path):
    tuner = Tuner(KernelLoader(KernelCache(tmp_path)))
    shape = WORKLOADS["depthwise"].input_shape
    name, key = tuner.record_id(DEPTHWISE, shape, SM90, "NVIDIA H100")
    tiles = depthwise_candidates(DEPTHWISE)[1]
    tuner.loader.cache.write_record(name, key, {"winner": str(tiles), "tiles": dataclasses.asdict(tiles),
                                                "template": tiles.template, "dropped": {},
                                                "timings_ms": {str(tiles): 0.1, "torch": 0.3}})
    assert tuner.lookup(DEPTHWISE, shape, SM90, "NVIDIA H100").winner == tiles


def test_names_are_readable_and_the_banner_names_spec_and_tiles():
    source = render_depthwise(DEPTHWISE)
    assert source.name == "conv3d_fwd_dw_k3x3x3_s1_p1_d1_g64_ci64_co64_f32"
    assert source.arg_names == ("n", "d", "h", "w", "od", "oh", "ow")
    assert source.params["tiles"] == str(default_depthwise_tiles(DEPTHWISE))
    text = source.text("spec=abc")
    banner = text[: text.index("#include")]
    assert "template:  conv3d_fwd_depthwise.cu.j2" in banner and "cache key: spec=abc" in banner
    spec_line = next(line for line in banner.splitlines() if line.startswith("// spec:"))
    assert ConvSpec(**json.loads(spec_line.split(":", 1)[1])) == DEPTHWISE


def test_wide_offsets_and_tiles_change_the_source():
    narrow, wide = render_depthwise(DEPTHWISE), render_depthwise(DEPTHWISE, wide=True)
    assert "using index_t = int;" in narrow.body and "using index_t = long long;" in wide.body
    assert wide.name == narrow.name + "_i64" and wide.params["offsets"] == "64-bit"
    a, b = depthwise_candidates(DEPTHWISE)[:2]
    assert kernel_key(render_depthwise(DEPTHWISE, a), SM90) != kernel_key(render_depthwise(DEPTHWISE, b), SM90)


def test_every_tap_of_every_output_plane_is_unrolled_once_and_named():
    tiles = DepthwiseTiles(ht=2, wt=4, th=32, tw=32, dt=8)
    body = render_depthwise(DEPTHWISE, tiles).body
    assert "#include <torch" not in body and "ATen" not in body
    taps = re.findall(r"tap<(\d+)>\(acc\[(\d+)\]\[(\d+)\], xr, wk\[(\d+)\]\);  // kd=(\d) kh=(\d) kw=(\d)", body)
    # 8 output planes x 2 rows x 27 taps, each once
    assert len(taps) == 8 * 2 * 27 and len(set((o, r, t) for _, o, r, t, *_ in taps)) == len(taps)
    for off, _, _, t, kd, kh, kw in taps:
        assert int(t) == (int(kd) * 3 + int(kh)) * 3 + int(kw) and int(off) == int(kw)
    assert body.count("__syncthreads();") == 10  # one after the first plane, one per later plane
    assert body.count("store_plane(yc, acc[") == 8


def test_the_geometry_of_the_workload():
    g = geometry(DEPTHWISE, DepthwiseTiles(ht=2, wt=4, th=32, tw=32, dt=8))
    assert (g.rows_in, g.cols_in, g.thread_rows, g.thread_cols) == (34, 34, 4, 6)
    assert (g.vector, g.reads, g.staged) == (4, 2, 10) and g.weights_in_registers
    assert len(g.planes) == 10 and g.live_accumulators == 24
    assert g.conflict_cycles == 2 * 4  # two 16-byte reads per row, four cycles each: no conflicts
    assert [p for p, _, _ in g.planes] == list(range(10))
    assert g.planes[0][1] == ((0, 0),) and g.planes[9][2] == (7,)
    strided = geometry(ConvSpec.from_text("3x3x3 --cin 4 --cout 4 --groups 4 --stride 3 --dilation 1"),
                       DepthwiseTiles(ht=1, wt=4, th=16, tw=32, dt=2))
    assert [p for p, _, _ in strided.planes] == [0, 1, 2, 3, 4, 5]  # planes no output uses are not staged
    assert strided.vector == 4 and strided.reads == 3  # (4 - 1) * 3 + 3 = 12 columns


# Compiled for sm_90 and sm_80: the workload's candidates in float32 and bfloat16, and specs that
# exercise what the template specializes on.
EDGE = [
    "3x3x3 --cin 8 --cout 8 --groups 8 --padding 1 --dtype float16",
    "1x1x1 --cin 8 --cout 8 --groups 8",
    "3x5x7 --cin 4 --cout 4 --groups 4 --padding 1x2x3 --no-bias",
    "5x5x5 --cin 4 --cout 4 --groups 4 --padding 2 --dtype bfloat16",          # weights in shared memory
    "3x3x3 --cin 4 --cout 8 --groups 4 --padding same",                       # channel multiplier 2
    "3x3x3 --cin 4 --cout 4 --groups 4 --stride 2 --padding 1 --dilation 2",
    "3x3x3 --cin 4 --cout 4 --groups 4 --stride 1x2x1 --padding 0x1x2 --dtype bfloat16",
    "7x7x7 --cin 2 --cout 2 --groups 2 --padding 3",
]


def _sources():
    workload = [render_depthwise(spec, t) for spec in (DEPTHWISE, DEPTHWISE_BF16) for t in depthwise_candidates(spec)]
    edge = [render_depthwise(ConvSpec.from_text(t)) for t in EDGE] + [render_depthwise(DEPTHWISE, wide=True)]
    return [(s, SM90) for s in workload + edge] + [(s, SM80) for s in workload[:1] + edge]


@pytest.fixture(scope="module")
def reports():
    return compile_all(_sources())


@pytest.mark.slow
def test_every_variant_compiles_for_sm90_and_sm80_without_spills(reports):
    assert len(reports) == 2 * len(depthwise_candidates(DEPTHWISE)) + 2 * (len(EDGE) + 1) + 1
    for source, target, report in reports:
        where = (source.name, source.params["tiles"], target.arch, report)
        assert report.registers > 0, where
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, where
