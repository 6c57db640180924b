import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from conv3d_codegen.spec import ConvSpec

REPO = Path(__file__).resolve().parents[2]

BASE = dict(in_channels=4, out_channels=8, kernel_size=3)


@pytest.mark.parametrize("changes, message", [
    (dict(groups=3), "in_channels must be divisible by groups (in_channels=4, groups=3)"),
    (dict(out_channels=6, groups=4), "out_channels must be divisible by groups (out_channels=6, groups=4)"),
    (dict(groups=0), "groups must be a positive integer, got 0"),
    (dict(in_channels=0), "in_channels must be a positive integer, got 0"),
    (dict(kernel_size=(3, 0, 3)), "kernel_size must be at least 1 in every dimension, got (3, 0, 3)"),
    (dict(kernel_size=(3, 3)), "kernel_size must be an int or a tuple of 3 ints, got (3, 3)"),
    (dict(stride=0), "non-positive stride is not supported, got stride=(0, 0, 0)"),
    (dict(dilation=(1, 0, 1)), "dilation should be greater than zero, got dilation=(1, 0, 1)"),
    (dict(padding=-1), "negative padding is not supported, got padding=(-1, -1, -1)"),
    (dict(padding="full"), "Invalid padding string 'full', should be one of {'valid', 'same'}"),
    (dict(padding="same", stride=2), "padding='same' is not supported for strided convolutions"),
    (dict(dtype=torch.float64), "dtype must be one of float32, float16, bfloat16, got float64"),
    (dict(dtype="bf16", precision="tf32"), "precision='tf32' applies to float32 only"),
    (dict(layout="nhwc"), "layout must be 'ncdhw' (torch.contiguous_format) or 'ndhwc' "
                          "(torch.channels_last_3d), got 'nhwc'"),
    (dict(layout=torch.channels_last), "layout must be 'ncdhw'"),
    (dict(bias="maybe"), "Input should be a valid boolean"),
    (dict(colour="red"), "Extra inputs are not permitted"),
])
def test_bad_spec_says_what_is_wrong(changes, message):
    with pytest.raises(ValidationError) as err:
        ConvSpec(**{**BASE, **changes})
    assert message in str(err.value)


def test_normalizes_like_torch():
    spec = ConvSpec(**BASE, stride=[1, 2, 3], padding="valid", dtype=torch.bfloat16)
    assert spec.kernel_size == (3, 3, 3) and spec.stride == (1, 2, 3) and spec.padding == (0, 0, 0)
    assert spec.dtype == "bfloat16" and spec.precision == "ieee"


@pytest.mark.parametrize("kernel, dilation, size", [((3, 3, 3), 1, 9), ((2, 4, 3), (1, 3, 2), 10)])
def test_output_size_and_same_padding_match_torch(kernel, dilation, size):
    for padding in ("same", (2, 1, 0)):
        spec = ConvSpec(in_channels=2, out_channels=3, kernel_size=kernel, dilation=dilation, padding=padding)
        x, w = torch.randn(1, 2, size, size + 1, size + 2), torch.randn(3, 2, *kernel)
        out = torch.nn.functional.conv3d(x, w, padding=padding, dilation=dilation)
        assert spec.output_size(*x.shape[2:]) == tuple(out.shape[2:])
    same = ConvSpec(in_channels=2, out_channels=3, kernel_size=(2, 4, 3), dilation=(1, 3, 2), padding="same")
    assert same.pad_before == (0, 4, 2) and same.pad_after == (1, 5, 2)  # the odd zero goes after


def test_from_module_reads_an_nn_conv3d():
    m = torch.nn.Conv3d(6, 12, (3, 5, 7), stride=(1, 2, 1), padding=2, groups=3,
                        bias=False, dtype=torch.float16)
    spec = ConvSpec.from_module(m)
    assert spec == ConvSpec(in_channels=6, out_channels=12, kernel_size=(3, 5, 7), stride=(1, 2, 1),
                            padding=2, groups=3, bias=False, dtype="float16")
    assert spec.weight_shape == tuple(m.weight.shape)
    reflect = torch.nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect")
    assert ConvSpec.from_module(reflect).padding == (0, 0, 0)  # the module pads before convolving


def test_text_form_round_trips():
    for text in ["3x5x7 --cin 3 --cout 64",
                 "1x3x3 --cin 8 --cout 8 --groups 8 --padding same --dilation 1x2x2 --no-bias --dtype bf16",
                 "5x3x3 --cin 32 --cout 64 --stride 1,2,3 --padding 2x1x0 --precision tf32"]:
        spec = ConvSpec.from_text(text)
        assert ConvSpec.from_text(spec.to_text()) == spec
    assert ConvSpec.from_text("1x3x3 --cin 8 --cout 8 --dilation 1x2x2").dilation == (1, 2, 2)


def test_text_form_errors_name_the_form():
    with pytest.raises(ValueError, match="required: --cout. Form: KDxKHxKW --cin N --cout N"):
        ConvSpec.from_text("3x3x3 --cin 3")
    with pytest.raises(ValueError, match="unrecognized arguments: --colour"):
        ConvSpec.from_text("3x3x3 --cin 3 --cout 3 --colour red")


def test_digest_is_stable_across_processes():
    spec = ConvSpec.from_text("3x5x7 --cin 3 --cout 64")
    code = "from conv3d_codegen.spec import ConvSpec; print(ConvSpec.from_text('3x5x7 --cout 64 --cin 3').digest)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(REPO)})
    assert other.stdout.strip() == spec.digest
    assert ConvSpec(**BASE).digest == ConvSpec(kernel_size=3, out_channels=8, in_channels=4).digest


@pytest.mark.parametrize("change", [
    dict(in_channels=8), dict(out_channels=16), dict(kernel_size=(3, 3, 1)), dict(stride=2),
    dict(padding=1), dict(padding="same"), dict(dilation=2), dict(groups=2), dict(bias=False),
    dict(dtype="float16"), dict(precision="tf32"), dict(layout="ndhwc"),
])
def test_changing_any_field_changes_the_digest_and_tag(change):
    base = ConvSpec(**BASE)
    changed = ConvSpec(**{**BASE, **change})
    assert changed.digest != base.digest
    assert changed.canonical_json() != base.canonical_json()
    if "bias" not in change:  # the tag is the readable name; bias shows in the digest only
        assert changed.tag != base.tag


@pytest.mark.parametrize("value, layout", [
    ("ncdhw", "ncdhw"), ("NCDHW", "ncdhw"), (torch.contiguous_format, "ncdhw"), ("contiguous_format", "ncdhw"),
    ("ndhwc", "ndhwc"), ("NDHWC", "ndhwc"), (torch.channels_last_3d, "ndhwc"), ("channels_last_3d", "ndhwc"),
])
def test_layout_takes_its_names_and_torch_memory_formats(value, layout):
    spec = ConvSpec(**BASE, layout=value)
    assert spec.layout == layout
    assert spec.memory_format == {"ncdhw": torch.contiguous_format, "ndhwc": torch.channels_last_3d}[layout]


def test_channels_last_is_in_the_json_tag_and_text_form():
    spec = ConvSpec.from_text("3x5x7 --cin 3 --cout 64 --layout ndhwc")
    assert spec.layout == "ndhwc" and spec.tag == "k3x5x7_s1_p0_d1_g1_ci3_co64_f32_cl"
    assert '"layout":"ndhwc"' in spec.canonical_json()
    assert ConvSpec.model_validate_json(spec.canonical_json()) == spec
    assert ConvSpec.from_text(spec.to_text()) == spec and spec.to_text().endswith("--layout ndhwc")
    plain = spec.model_copy(update={"layout": "ncdhw"})
    assert plain.tag == "k3x5x7_s1_p0_d1_g1_ci3_co64_f32" and "--layout" not in plain.to_text()


def test_layout_of_a_tensor():
    from conv3d_codegen.spec import layout_of
    x = torch.randn(2, 3, 4, 5, 6)
    assert layout_of(x) == "ncdhw"
    assert layout_of(x.to(memory_format=torch.channels_last_3d)) == "ndhwc"
    assert layout_of(x[..., ::2]) == "ncdhw"  # strided: made contiguous
    one_channel = torch.randn(2, 1, 4, 5, 6).to(memory_format=torch.channels_last_3d)
    assert one_channel.is_contiguous() and layout_of(one_channel) == "ncdhw"  # contiguous in both
    assert layout_of(torch.randn(3, 4, 5, 6)) == "ncdhw"
