"""convert() and conv_calls() on the CPU (the meta device needs no GPU)."""
import pytest
import torch

import conv3d_codegen
from conv3d_codegen import Conv3d
from conv3d_codegen.models import conv_calls, convert

from .models_for_tests import small_cnn


def test_convert_swaps_every_conv3d_and_keeps_weights_hooks_and_results():
    torch.manual_seed(0)
    model = small_cnn()
    reference = small_cnn()
    reference.load_state_dict(model.state_dict())
    weight = model[0].weight
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert convert(model) is model
    assert [type(m) for m in model if isinstance(m, torch.nn.Conv3d)] == [Conv3d] * 3
    assert model[0].weight is weight and model[0].precision == "ieee"
    x = torch.randn(2, 3, 9, 10, 11)
    assert torch.equal(model(x), reference(x)) and len(seen) == 1
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_convert_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        convert(small_cnn(), precision="fp8")


def test_conv_calls_finds_every_conv_with_the_shape_it_sees():
    calls = conv_calls(small_cnn(), (2, 3, 9, 10, 11))
    assert [c.module for c in calls] == ["0", "2", "4"]
    assert [c.input_shape for c in calls] == [(2, 3, 9, 10, 11), (2, 8, 11, 12, 13), (2, 8, 6, 5, 5)]
    assert calls[1].spec.padding == (0, 0, 0)  # reflect padding happens before the convolution
    assert calls[0].spec.kernel_size == (3, 3, 3) and calls[2].spec.out_channels == 4


def test_conv_calls_keeps_the_dtype():
    assert {c.spec.dtype for c in conv_calls(small_cnn(), (1, 3, 8, 8, 8), torch.bfloat16)} == {"bfloat16"}


def test_explain_says_what_ran_for_each_layer(tmp_path):
    from conv3d_codegen.cache import KernelCache
    from conv3d_codegen.dispatch import Dispatcher, explain
    dispatcher = Dispatcher(KernelCache(tmp_path))
    model = convert(small_cnn())
    x = torch.randn(1, 3, 8, 8, 8)
    for layer in (model[0],):
        conv3d_codegen.ops.run(dispatcher, x, layer.weight, layer.bias, padding=1)
    text = explain(model, dispatcher)
    assert text.splitlines()[0] == ("0: k3x3x3_s1_p1_d1_g1_ci3_co8_f32 on input (1, 3, 8, 8, 8) float32 cpu: torch; "
                                    "input is on cpu; generated kernels run on CUDA devices")
    assert "2: not called yet" in text and "4: not called yet" in text


def test_modes_are_checked():
    from conv3d_codegen.dispatch import Dispatcher
    with pytest.raises(ValueError, match="mode must be one of jit, async, prebuilt, off, got 'fast'"):
        Dispatcher(mode="fast")


def test_the_default_dispatcher_reads_its_mode_from_the_environment(monkeypatch):
    from conv3d_codegen import dispatch
    monkeypatch.setattr(dispatch, "_default", None)
    monkeypatch.setenv("CONV3D_CODEGEN_MODE", "later")
    with pytest.raises(ValueError, match="CONV3D_CODEGEN_MODE must be one of"):
        dispatch.default_dispatcher()
    monkeypatch.setenv("CONV3D_CODEGEN_MODE", "prebuilt")
    monkeypatch.setenv("CONV3D_CODEGEN_AUTOTUNE", "0")
    made = dispatch.default_dispatcher()
    assert (made.mode, made.autotune) == ("prebuilt", False)
    monkeypatch.delenv("CONV3D_CODEGEN_MODE")
    monkeypatch.delenv("CONV3D_CODEGEN_AUTOTUNE")
    monkeypatch.setattr(dispatch, "_default", None)
    assert (dispatch.default_dispatcher().mode, dispatch.default_dispatcher().autotune) == ("async", True)
