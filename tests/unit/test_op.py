"""The custom op as PyTorch sees it, on the CPU: its schema, fake-tensor shapes (on fake CUDA
tensors, which need no GPU), opcheck, torch.compile without graph breaks, and the current
dispatcher."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import conv3d_codegen
import conv3d_codegen.backward
from conv3d_codegen import ConvSpec, conv3d, convert
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, default_dispatcher, set_default_dispatcher, using

from .models_for_tests import small_cnn

OPS = torch.ops.conv3d_codegen


def test_the_ops_are_registered_with_primitive_arguments():
    assert str(OPS.conv3d.default._schema) == (
        "conv3d_codegen::conv3d(Tensor input, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, "
        "int[3] dilation, int groups, bool padding_same, str precision) -> Tensor")
    assert "str spec" in str(OPS.conv3d_input_grad.default._schema)
    assert "(Tensor?, Tensor?)" in str(OPS.conv3d_weight_grad.default._schema)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("conv3d_codegen::conv3d", "AutocastCUDA")


FAKE_CALLS = [
    ((2, 4, 9, 10, 11), (6, 2, 3, 3, 3), dict(groups=2)),
    ((2, 4, 9, 10, 11), (6, 4, 3, 5, 1), dict(stride=(1, 2, 3), padding=(1, 0, 2))),
    ((1, 4, 9, 10, 11), (6, 4, 2, 4, 3), dict(padding="same", dilation=(1, 3, 2))),
    ((1, 4, 9, 10, 11), (6, 4, 3, 3, 3), dict(padding="valid", dilation=2)),
    ((4, 9, 10, 11), (6, 4, 3, 3, 3), dict(padding=1)),  # unbatched
]


@pytest.mark.parametrize("formats", ["contiguous", "channels_last_input", "channels_last_weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("input_shape,weight_shape,kwargs", FAKE_CALLS)
def test_fake_tensors_get_the_shape_dtype_and_layout_of_torch(input_shape, weight_shape, kwargs, dtype, formats):
    """Strides too: torch picks the output's memory format from the input's and the weight's
    (on a CUDA build with cuDNN, channels_last_3d if either is), and the op's is torch's."""
    with FakeTensorMode():
        x = torch.empty(input_shape, device="cuda", dtype=dtype)
        w = torch.empty(weight_shape, device="cuda", dtype=dtype)
        b = torch.empty(weight_shape[0], device="cuda", dtype=dtype)
        if formats == "channels_last_input" and x.dim() == 5:
            x = x.to(memory_format=torch.channels_last_3d)
        if formats == "channels_last_weight":
            w = w.to(memory_format=torch.channels_last_3d)
        ours, theirs = conv3d(x, w, b, **kwargs), F.conv3d(x, w, b, **kwargs)
    assert (ours.shape, ours.dtype, ours.device) == (theirs.shape, theirs.dtype, theirs.device)
    assert ours.stride() == theirs.stride()


def test_torch_compile_traces_the_cuda_path_into_one_graph_with_the_op():
    """Fake CUDA tensors take conv3d()'s CUDA branch on a machine without a GPU."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    def net(x, w1, b1, w2):
        y = conv3d(x, w1, b1, padding=1).relu()
        return conv3d(y, w2, None, stride=2, padding=(0, 1, 2), precision="tf32")

    with FakeTensorMode():
        x = torch.empty(2, 3, 9, 10, 11, device="cuda")
        w1, b1 = torch.empty(8, 3, 3, 3, 3, device="cuda"), torch.empty(8, device="cuda")
        w2 = torch.empty(4, 8, 1, 3, 5, device="cuda")
        out = torch.compile(net, fullgraph=True, backend=backend)(x, w1, b1, w2)
        expected = F.conv3d(F.conv3d(x, w1, b1, padding=1), w2, stride=2, padding=(0, 1, 2))
    assert out.shape == expected.shape
    (graph,) = graphs
    targets = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    assert targets.count(OPS.conv3d.default) + targets.count(OPS.conv3d) == 2, targets


def test_torch_compile_of_a_conv3d_model_has_no_graph_break():
    torch.manual_seed(0)
    theirs = small_cnn()
    ours = convert(small_cnn())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 9, 10, 11)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), theirs(x))
    torch.testing.assert_close(compiled(x[0]), theirs(x[0]))  # unbatched: a second graph, still whole


def test_torch_compile_of_the_op_with_autograd_gives_torchs_gradients():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 6, 7, 8), torch.randn(6, 2, 3, 3, 3), torch.randn(6)

    def loss(x, w, b):
        return OPS.conv3d(x, w, b, [1, 2, 1], [1, 1, 1], [1, 1, 1], 2, False, "ieee").relu().square().sum()

    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    torch.compile(loss, fullgraph=True, backend="aot_eager")(*ours).backward()
    theirs = [t.clone().requires_grad_() for t in (x, w, b)]
    F.conv3d(*theirs, stride=(1, 2, 1), padding=1, groups=2).relu().square().sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


OPCHECK_CALLS = [
    ((2, 4, 6, 7, 8), (6, 2, 3, 3, 3), True, ([1, 2, 1], [0, 1, 2], [2, 1, 1], 2, False, "tf32")),
    ((1, 3, 5, 6, 7), (4, 3, 2, 3, 2), False, ([1, 1, 1], [0, 0, 0], [1, 2, 1], 1, True, "ieee")),
]


@pytest.mark.parametrize("input_shape,weight_shape,bias,args", OPCHECK_CALLS)
def test_opcheck_of_the_forward_op_on_the_cpu(input_shape, weight_shape, bias, args):
    x = torch.randn(input_shape, requires_grad=True)
    w = torch.randn(weight_shape, requires_grad=True)
    b = torch.randn(weight_shape[0], requires_grad=True) if bias else None
    torch.library.opcheck(OPS.conv3d, (x, w, b, *args))


@pytest.mark.parametrize("input_shape,weight_shape,bias,args", OPCHECK_CALLS)
def test_opcheck_of_the_forward_op_on_channels_last_cpu_tensors(input_shape, weight_shape, bias, args):
    x = torch.randn(input_shape).to(memory_format=torch.channels_last_3d).requires_grad_()
    w = torch.randn(weight_shape, requires_grad=True)
    b = torch.randn(weight_shape[0], requires_grad=True) if bias else None
    out = OPS.conv3d(x, w, b, *args)
    reference = F.conv3d(x, w, b, stride=args[0], padding="same" if args[4] else args[1], dilation=args[2],
                         groups=args[3])
    assert out.stride() == reference.stride()  # the op returns torch's memory format
    torch.library.opcheck(OPS.conv3d, (x, w, b, *args))


def test_opcheck_of_the_gradient_ops_on_the_cpu():
    spec = ConvSpec(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2)
    x, w = torch.randn(2, 4, 5, 6, 7), torch.randn(6, 2, 3, 3, 3)
    grad_out = torch.randn(2, 6, 5, 6, 7)
    torch.library.opcheck(OPS.conv3d_input_grad, (grad_out, w, list(x.shape), spec.canonical_json()))
    for need_weight, need_bias in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(OPS.conv3d_weight_grad, (grad_out, x, spec.canonical_json(), need_weight, need_bias))


@pytest.mark.parametrize("needs", [n for n in itertools.product([False, True], repeat=3) if any(n)],
                         ids=lambda n: "".join(name if need else "-" for name, need in zip("xwb", n)))
def test_backward_makes_only_the_gradients_that_are_needed(needs, monkeypatch):
    """backward.input_grad and weight_grad replaced by torch's convolution_backward, counting
    the calls."""
    calls = []

    def convolution_backward(spec, grad_out, x, weight, mask):
        return torch.ops.aten.convolution_backward(grad_out, x, weight, [spec.out_channels], list(spec.stride),
                                                   list(spec.padding), list(spec.dilation), False, [0, 0, 0],
                                                   spec.groups, mask)

    def input_grad(dispatcher, spec, grad_out, weight, input_shape):
        calls.append(("input_grad",))
        return convolution_backward(spec, grad_out, torch.empty(input_shape), weight, [True, False, False])[0]

    def weight_grad(dispatcher, spec, grad_out, x, need_weight, need_bias):
        calls.append(("weight_grad", need_weight, need_bias))
        weight = torch.empty(spec.weight_shape)
        return convolution_backward(spec, grad_out, x, weight, [False, need_weight, need_bias])[1:]

    monkeypatch.setattr(conv3d_codegen.backward, "input_grad", input_grad)
    monkeypatch.setattr(conv3d_codegen.backward, "weight_grad", weight_grad)
    torch.manual_seed(0)
    tensors = (torch.randn(2, 4, 5, 6, 7), torch.randn(6, 2, 3, 3, 3), torch.randn(6))
    ours = [t.clone().requires_grad_(need) for t, need in zip(tensors, needs)]
    theirs = [t.clone().requires_grad_(need) for t, need in zip(tensors, needs)]
    out = OPS.conv3d(*ours, [1, 1, 2], [1, 1, 1], [1, 1, 1], 2, False, "ieee")
    grad = torch.randn_like(out)
    out.backward(grad)
    F.conv3d(*theirs, stride=(1, 1, 2), padding=1, groups=2).backward(grad)
    for name, a, b in zip("xwb", ours, theirs):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
    need_x, need_w, need_b = needs
    assert calls == [("input_grad",)] * need_x + [("weight_grad", need_w, need_b)] * (need_w or need_b)


def test_the_backward_ops_get_the_forward_spec():
    from conv3d_codegen.ops import _spec, _spec_json
    text = _spec_json((6, 2, 2, 4, 3), True, torch.bfloat16, (1, 1, 1), (0, 0, 0), (1, 3, 2), 2, True, "tf32")
    assert _spec(text) == ConvSpec(in_channels=4, out_channels=6, kernel_size=(2, 4, 3), padding="same",
                                   dilation=(1, 3, 2), groups=2, dtype="bfloat16")  # tf32: float32 only


def test_a_precision_other_than_ieee_or_tf32_is_refused():
    with pytest.raises(ValueError, match="precision must be one of \\('ieee', 'tf32'\\), got 'fp8'"):
        conv3d(torch.randn(1, 3, 4, 4, 4), torch.randn(2, 3, 1, 1, 1), precision="fp8")


def test_set_default_dispatcher_and_using_restore_the_one_before(tmp_path):
    first, second = Dispatcher(KernelCache(tmp_path / "a")), Dispatcher(KernelCache(tmp_path / "b"))
    before = set_default_dispatcher(first)
    try:
        assert default_dispatcher() is first
        with using(second):
            assert default_dispatcher() is second
            with using(first):
                assert default_dispatcher() is first
            assert default_dispatcher() is second
        assert default_dispatcher() is first
        with pytest.raises(RuntimeError), using(second):
            raise RuntimeError
        assert default_dispatcher() is first
        assert set_default_dispatcher(second) is first
    finally:
        set_default_dispatcher(before)


def test_the_op_and_run_ask_the_current_dispatcher(tmp_path):
    mine = Dispatcher(KernelCache(tmp_path))
    x, w = torch.randn(1, 3, 4, 5, 6), torch.randn(2, 3, 3, 3, 3)
    with using(mine):
        OPS.conv3d(x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, False, "ieee")
    assert [p.reason for p in mine.plans()] == ["input is on cpu; generated kernels run on CUDA devices"]
    other = Dispatcher(KernelCache(tmp_path))
    before = default_dispatcher()
    conv3d_codegen.ops.run(other, x, w, padding=2)
    assert len(other.plans()) == 1 and default_dispatcher() is before
