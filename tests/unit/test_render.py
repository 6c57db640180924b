import json
import os
import re
from pathlib import Path

import jinja2
import pytest

from conv3d_codegen import render
from conv3d_codegen.render import (MAX_UNROLLED_TAPS, Tiles, default_tiles, render_direct, render_generic,
                                   supports, templates_dir)
from conv3d_codegen.spec import ConvSpec

SNAPSHOTS = Path(__file__).parent / "snapshots"
SEED_A = ConvSpec.from_text("3x5x7 --cin 3 --cout 64")


def test_seed_a_matches_its_snapshot():
    """The emitted body of 3x5x7 is reviewed source; a change to it must be deliberate.
    Accept a reviewed change with CONV3D_UPDATE_SNAPSHOTS=1."""
    source = render_direct(SEED_A)
    path = SNAPSHOTS / f"{source.name}.cu"
    if os.environ.get("CONV3D_UPDATE_SNAPSHOTS") == "1":
        path.write_text(source.body)
    assert source.body == path.read_text(), f"emitted source differs from {path}"


def test_no_run_time_loop_over_taps_remains():
    body = render_direct(SEED_A).body
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"\bfor \(", line):
            compile_time = lines[i - 1].strip() == "#pragma unroll" and re.search(r"< (COT|WT|ROW);", line)
            staging = "i += BLOCK" in line  # the cooperative copy of weights into shared memory
            assert compile_time or staging, f"run-time loop on line {i + 1}: {line.strip()}"
    taps = re.findall(r"tap<(\d+)>\(acc, xr, ws \+ (\d+)\);  // kd=(\d) kh=(\d) kw=(\d)", body)
    rows = re.findall(r"// ci=(\d) kd=(\d) kh=(\d)$", body, flags=re.M)
    assert len(rows) == 3 * 3 * 5 and len(taps) == 3 * 3 * 5 * 7
    assert {(int(kw), int(off)) for off, _, _, _, kw in taps} == {(kw, kw) for kw in range(7)}
    assert sorted(int(ws) for _, ws, *_ in taps) == [8 * t for t in range(315)]  # each weight once


def test_banner_names_spec_template_version_and_key():
    source = render_direct(SEED_A)
    text = source.text("spec=abc-src=def")
    banner = text[: text.index("#include")]
    assert source.name in banner
    assert "template:  conv3d_fwd_direct.cu.j2" in banner and "cache key: spec=abc-src=def" in banner
    assert f"conv3d-codegen {source.generator_version}" in banner
    spec_line = next(line for line in banner.splitlines() if line.startswith("// spec:"))
    assert ConvSpec(**json.loads(spec_line.split(":", 1)[1])) == SEED_A
    assert text.endswith(source.body)


def test_kernel_names_are_readable():
    assert render_direct(SEED_A).name == "conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32"
    spec = ConvSpec.from_text("1x3x3 --cin 8 --cout 8 --groups 8 --padding same --precision tf32")
    assert render_direct(spec).name == "conv3d_fwd_k1x3x3_s1_psame_d1_g8_ci8_co8_tf32"
    strided = ConvSpec.from_text("5x3x3 --cin 4 --cout 8 --stride 1x2x3 --padding 2x1x0 --dtype fp16")
    assert render_direct(strided).name == "conv3d_fwd_k5x3x3_s1x2x3_p2x1x0_d1_g1_ci4_co8_f16"
    assert render_generic("bfloat16").name == "conv3d_fwd_generic_bf16"


def test_strict_undefined_refuses_a_missing_variable():
    env = render._environment(templates_dir())
    with pytest.raises(jinja2.UndefinedError):
        env.get_template(render.DIRECT_TEMPLATE).render(spec=SEED_A)


@pytest.mark.parametrize("text, reason", [
    ("9x9x9 --cin 1 --cout 8", "has 729 taps; the direct template unrolls at most 343"),
    ("7x7x7 --cin 1 --cout 8", None),
    ("1x1x1 --cin 3 --cout 5", None),
])
def test_supports_gives_the_reason(text, reason):
    found = supports(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_render_direct_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="does not serve this spec: kernel 9x9x9"):
        render_direct(ConvSpec.from_text("9x9x9 --cin 1 --cout 8"))


def test_tiles_are_checked_against_the_spec():
    spec = ConvSpec.from_text("3x3x3 --cin 12 --cout 12 --groups 2")
    assert Tiles(cot=2, wt=4, block=128, cic=6).problem(spec) is None
    assert "cot=4 does not divide the 6" in Tiles(4, 4, 128, 3).problem(ConvSpec.from_text("3x3x3 --cin 6 --cout 6"))
    assert "cic=4 does not divide" in Tiles(2, 4, 128, 4).problem(spec)
    assert "block=100" in Tiles(2, 4, 100, 1).problem(spec)
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_direct(spec, Tiles(4, 4, 128, 4))


def test_default_tiles_keep_unrolling_and_shared_memory_bounded():
    for text in ["3x5x7 --cin 3 --cout 64", "3x3x3 --cin 64 --cout 64", "7x7x7 --cin 64 --cout 64",
                 "1x1x1 --cin 1024 --cout 7", "3x3x3 --cin 64 --cout 64 --groups 64"]:
        spec = ConvSpec.from_text(text)
        tiles = default_tiles(spec)
        assert tiles.problem(spec) is None
        assert tiles.cic * spec.kernel_volume <= MAX_UNROLLED_TAPS
    assert default_tiles(SEED_A).cic == 3  # few input channels: all unrolled


def test_only_w_padding_changes_the_loads():
    padded_w = render_direct(ConvSpec.from_text("3x3x3 --cin 2 --cout 4 --padding 0x0x1")).body
    padded_h = render_direct(ConvSpec.from_text("3x3x3 --cin 2 --cout 4 --padding 0x1x0")).body
    assert "const bool in = inside(iw0 + i, w);" in padded_w
    assert "const bool in = " not in padded_h and "xr[i] = load(p + i);" in padded_h


def test_an_edited_source_is_its_own_kernel_under_its_own_name():
    source = render_direct(SEED_A)
    edited = source.edited("probe", source.body.replace("__syncthreads();", "__syncthreads();  // edited", 1))
    assert edited.name == source.name + "_probe" and edited.entry == source.name + "_probe_launch"
    assert source.name + "_probe_launch" in edited.body and source.name + "(" not in edited.body
    assert edited.identity == source.identity and edited.body != source.body


def test_wide_offsets_are_a_separate_kernel():
    narrow, wide = render_direct(SEED_A), render_direct(SEED_A, wide=True)
    assert "using index_t = int;" in narrow.body and "using index_t = long long;" in wide.body
    assert wide.name == narrow.name + "_i64" and wide.params["offsets"] == "64-bit"


def test_wide_offsets_start_at_two_to_the_30_elements_of_input_or_output():
    from conv3d_codegen.render import wide_offsets
    assert not wide_offsets(SEED_A, (16, 3, 64, 64, 64))
    assert wide_offsets(ConvSpec.from_text("3x3x3 --cin 4 --cout 8"), (1, 4, 512, 1024, 1024))  # the input
    assert wide_offsets(SEED_A, (64, 3, 128, 128, 128))  # the output: 64 channels of 126x124x122 each


# ---- channels_last_3d (layout 'ndhwc') ---------------------------------------------------

SEED_A_CL = SEED_A.model_copy(update={"layout": "ndhwc"})


def test_seed_a_channels_last_matches_its_snapshot():
    """The NDHWC body of 3x5x7, reviewed like the NCDHW one (CONV3D_UPDATE_SNAPSHOTS=1 accepts)."""
    source = render_direct(SEED_A_CL)
    path = SNAPSHOTS / f"{source.name}.cu"
    if os.environ.get("CONV3D_UPDATE_SNAPSHOTS") == "1":
        path.write_text(source.body)
    assert source.body == path.read_text(), f"emitted source differs from {path}"


def test_channels_last_keeps_every_tap_unrolled():
    source = render_direct(SEED_A_CL)
    assert source.name == "conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_cl" and source.layout == "ndhwc"
    body = source.body
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"\bfor \(", line):
            compile_time = lines[i - 1].strip() == "#pragma unroll" and re.search(r"< (COT|WT|ROW|WORDS / PER_STORE|WORDS);", line)
            assert compile_time or "i += BLOCK" in line, f"run-time loop on line {i + 1}: {line.strip()}"
    rows = re.findall(r"// ci=(\d) kd=(\d) kh=(\d)$", body, flags=re.M)
    assert len(rows) == 3 * 3 * 5
    taps = re.findall(r"tap<(\d+)>\(acc, xr, ws \+ (\d+)\);", body)
    assert sorted(int(ws) for _, ws in taps) == [8 * t for t in range(315)]  # each weight once
    # a row's offset: channel + d and h strides of NDHWC; its inputs along w are CI apart
    assert "load_row(xr, xc + 2 + 1 * hwc + 3 * wc, iw0, w);" in body
    assert "xr[i] = load(p + i * CI);" in body
    assert "reinterpret_cast<uint4*>(p)[k] = make_uint4(" in body  # 8 float channels: two 16-byte stores


@pytest.mark.parametrize("text, store", [
    ("3x3x3 --cin 3 --cout 64", "reinterpret_cast<uint4*>(p)[k]"),                   # cot=8: 32 bytes
    ("3x3x3 --cin 3 --cout 64 --dtype bf16", "reinterpret_cast<uint4*>(p)[k]"),      # cot=8: 16 bytes
    ("3x3x3 --cin 4 --cout 4 --dtype bf16", "reinterpret_cast<uint2*>(p)[k]"),       # cot=4: 8 bytes
    ("3x3x3 --cin 6 --cout 6 --dtype fp16", "reinterpret_cast<unsigned*>(p)[k]"),    # cot=6: 12 bytes
    ("3x3x3 --cin 3 --cout 3 --dtype bf16", "for (int c = 0; c < COT; ++c) store(p + c, v[c]);"),  # 6 bytes
])
def test_channels_last_output_stores_are_as_wide_as_the_channels_allow(text, store):
    body = render_direct(ConvSpec.from_text(text + " --layout ndhwc")).body
    assert store in body


def test_channels_last_padding_along_w_reads_zeros_from_a_safe_address():
    body = render_direct(ConvSpec.from_text("3x3x3 --cin 2 --cout 4 --padding 1 --layout ndhwc")).body
    assert "const float v = load(in ? p + i * CI : p - iw0 * CI);" in body


def test_channels_last_generic_kernel_is_its_own_build():
    plain, cl = render_generic("float32"), render_generic("float32", "ndhwc")
    assert cl.name == "conv3d_fwd_generic_f32_cl" and cl.layout == "ndhwc" and plain.layout == "ncdhw"
    assert cl.identity != plain.identity and "load(xc + id * plane + ih * row + iw * g.ci)" in cl.body
    assert "const long long coi = i - r * g.co;" in cl.body  # one thread per output, channels fastest
