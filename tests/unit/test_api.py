"""The public API on the CPU: signatures, drop-in behaviour, fallbacks and their reasons."""
import inspect
import logging

import pytest
import torch
import torch.nn.functional as F

import conv3d_codegen
from conv3d_codegen import Conv3d, FallbackError, conv3d, strict
from conv3d_codegen.dispatch import Dispatcher, strict_enabled
from conv3d_codegen.cache import KernelCache


def test_conv3d_has_the_signature_of_torch_functional_conv3d():
    ours = inspect.signature(conv3d).parameters
    # torch's conv3d is a builtin without a Python signature; its documented one:
    torch_params = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    assert list(ours)[:7] == torch_params
    assert [ours[p].default for p in torch_params[2:]] == [None, 1, 0, 1, 1]
    assert ours["precision"].kind is inspect.Parameter.KEYWORD_ONLY


def test_cpu_tensors_go_to_torch_with_the_reason_logged_once(tmp_path, caplog):
    dispatcher = Dispatcher(KernelCache(tmp_path))
    x, w, b = torch.randn(2, 3, 5, 6, 7), torch.randn(4, 3, 3, 3, 3), torch.randn(4)
    with caplog.at_level(logging.INFO, logger="conv3d_codegen"):
        for _ in range(3):
            out = conv3d_codegen.ops.run(dispatcher, x, w, b, padding=1)
    assert torch.equal(out, F.conv3d(x, w, b, padding=1))
    records = [r for r in caplog.records if "generated kernels run on CUDA devices" in r.getMessage()]
    assert len(records) == 1
    assert dispatcher.plan(x, w, b, 1, 1, 1, 1).route == "torch"
    assert not list(tmp_path.iterdir())  # nothing was built


def test_channels_last_cpu_tensors_still_go_to_torch_in_torchs_format(tmp_path):
    dispatcher = Dispatcher(KernelCache(tmp_path))
    x = torch.randn(2, 3, 5, 6, 7).to(memory_format=torch.channels_last_3d)
    w, b = torch.randn(4, 3, 3, 3, 3), torch.randn(4)
    out = conv3d_codegen.ops.run(dispatcher, x, w, b, padding=1)
    ref = F.conv3d(x, w, b, padding=1)
    assert torch.equal(out, ref) and out.stride() == ref.stride()
    plan = dispatcher.plan(x, w, b, 1, 1, 1, 1)
    assert plan.route == "torch" and plan.reason.startswith("input is on cpu")
    assert plan.spec.layout == "ndhwc"  # the spec says what a CUDA call would have run
    contiguous = dispatcher.plan(x.contiguous(), w, b, 1, 1, 1, 1)
    assert contiguous.spec.layout == "ncdhw" and contiguous is not plan  # the plans are kept apart
    assert not list(tmp_path.iterdir())


def test_unbatched_input_works_as_in_torch():
    x, w = torch.randn(3, 5, 6, 7), torch.randn(4, 3, 3, 3, 3)
    assert torch.equal(conv3d(x, w, padding="same"), F.conv3d(x, w, padding="same"))


def test_strict_mode_turns_a_fallback_into_an_error(monkeypatch):
    x, w = torch.randn(1, 3, 4, 4, 4), torch.randn(2, 3, 1, 1, 1)
    with strict(), pytest.raises(FallbackError, match="would run on torch: input is on cpu"):
        conv3d(x, w)
    assert not strict_enabled()
    monkeypatch.setenv("CONV3D_CODEGEN_STRICT", "1")
    assert strict_enabled()
    with strict(False):
        conv3d(x, w)


def test_bad_input_raises_torch_errors():
    x = torch.randn(1, 3, 4, 4, 4)
    with pytest.raises(RuntimeError, match="expected input.* to have 6 channels"):
        conv3d(x, torch.randn(2, 6, 1, 1, 1))
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        conv3d(x, torch.randn(2, 3, 5, 5, 5))


CONSTRUCTORS = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5, 7), stride=(1, 2, 1), padding=(1, 2, 3),
         dilation=2, groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=4),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=(1, 0, 2), padding_mode="circular"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="replicate"),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTORS)
def test_conv3d_module_is_a_drop_in_for_nn_conv3d(kwargs):
    torch.manual_seed(0)
    ours, theirs = Conv3d(**kwargs), torch.nn.Conv3d(**kwargs)
    assert isinstance(ours, torch.nn.Conv3d)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, kwargs["in_channels"], 7, 8, 9, requires_grad=True)
    assert torch.equal(ours(x), theirs(x))
    assert repr(ours) == repr(theirs)


def test_conv3d_module_precision():
    m = Conv3d(3, 8, 3, precision="tf32")
    assert "precision='tf32'" in repr(m) and m.spec.precision == "tf32" and "precision" not in m.state_dict()
    assert Conv3d(3, 8, 3, dtype=torch.bfloat16, precision="tf32").spec.precision == "ieee"  # float32 only
    with pytest.raises(ValueError, match="precision must be one of \\('ieee', 'tf32'\\), got 'fp8'"):
        Conv3d(3, 8, 3, precision="fp8")


def test_cudnn_precision_follows_the_spec_and_restores_the_setting():
    from conv3d_codegen.dispatch import cudnn_precision
    before = torch.backends.cudnn.allow_tf32
    with cudnn_precision("ieee"):
        assert torch.backends.cudnn.allow_tf32 is False
    with cudnn_precision("tf32"):
        assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 == before
