"""The op as PyTorch sees it on the GPU: opcheck, torch.compile, CUDA graphs, autocast, which
gradients are made, deterministic algorithms and a short training run, each against
torch.nn.Conv3d / F.conv3d. The session's dispatcher is the current one (conftest)."""
import contextlib
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import conv3d_codegen.backward
from conv3d_codegen import Conv3d, conv3d, strict
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, cudnn_precision
from conv3d_codegen.measure import random_inputs, relative_error
from conv3d_codegen.spec import ConvSpec

from .matrix import pick

OPS = torch.ops.conv3d_codegen
IEEE = 1e-5  # measure.TOLERANCE for float32


def cnn(conv) -> torch.nn.Sequential:
    """A small 3D CNN: stride, asymmetric padding and 'same' among its layers."""
    return torch.nn.Sequential(conv(3, 8, 3, padding=1), torch.nn.ReLU(),
                               conv(8, 8, (1, 3, 5), stride=2, padding=(0, 1, 2)), torch.nn.ReLU(),
                               conv(8, 4, 3, padding="same"))


def twin_models(seed: int = 0):
    """conv3d_codegen's CNN and torch's, with the same weights, on the GPU."""
    torch.manual_seed(seed)
    theirs = cnn(torch.nn.Conv3d).cuda()
    ours = cnn(Conv3d).cuda()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@contextlib.contextmanager
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# ---- opcheck ----------------------------------------------------------------------------

OPCHECK_CASES = [pick("base-3x3x3", "float32"), pick("stride1x2x3", "bfloat16"), pick("padsame", "float32"),
                 pick("groups2", "bfloat16")]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_of_the_three_ops(case):
    spec = case.spec
    x, weight, bias = random_inputs(spec, (2, *case.input_shape[1:]))
    x, weight = x.requires_grad_(), weight.requires_grad_()
    bias = bias.requires_grad_() if bias is not None else None
    padding = [0, 0, 0] if spec.padding == "same" else list(spec.padding)
    torch.library.opcheck(OPS.conv3d, (x, weight, bias, list(spec.stride), padding, list(spec.dilation),
                                       spec.groups, spec.padding == "same", spec.precision))
    grad_out = torch.randn((2, spec.out_channels, *spec.output_size(*x.shape[2:])), device="cuda", dtype=x.dtype)
    text = spec.canonical_json()
    torch.library.opcheck(OPS.conv3d_input_grad, (grad_out, weight.detach(), list(x.shape), text))
    torch.library.opcheck(OPS.conv3d_weight_grad, (grad_out, x.detach(), text, True, spec.bias))


# ---- torch.compile ----------------------------------------------------------------------

def test_torch_compile_fullgraph_matches_nn_conv3d(dispatcher):
    ours, theirs = twin_models()
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(2, 3, 9, 10, 11, device="cuda")
    with strict():  # every layer runs its generated kernel inside the compiled graph
        out = compiled(x)
    out.square().mean().backward()
    reference = theirs.double()
    ref = reference(x.double())
    ref.square().mean().backward()
    assert relative_error(out, ref) <= IEEE
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, q.grad) <= IEEE, name


# ---- CUDA graphs ------------------------------------------------------------------------

def test_cuda_graph_capture_and_replay_of_forward_and_backward():
    ours, theirs = twin_models(1)
    static_x = torch.randn(2, 3, 9, 10, 11, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as torch's docs ask: plans made, kernels loaded
        for _ in range(3):
            ours.zero_grad(set_to_none=True)
            ours(static_x).square().mean().backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    ours.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        with strict():
            static_out = ours(static_x)
        static_out.square().mean().backward()

    reference = theirs.double()
    for _ in range(2):
        x = torch.randn_like(static_x)
        static_x.copy_(x)
        graph.replay()
        reference.zero_grad(set_to_none=True)
        ref = reference(x.double())
        ref.square().mean().backward()
        assert relative_error(static_out, ref) <= IEEE
        for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
            assert relative_error(p.grad, q.grad) <= IEEE, name


def test_during_capture_nothing_is_built_or_tuned(tmp_path, cache_root):
    case = pick("base-3x3x3", "float32")
    x, weight, bias = random_inputs(case.spec, (1, 4, 7, 8, 13))  # a shape no test tunes
    empty = Dispatcher(KernelCache(tmp_path))  # mode 'jit': outside capture it would build
    built = Dispatcher(KernelCache(cache_root), autotune=True)  # the kernel is there; no tuning record
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        missing = empty.plan(x, weight, bias, 1, 0, 1, 1)
        found = built.plan(x, weight, bias, 1, 0, 1, 1)
        x.mul(2)
    assert missing.route == "torch" and "CUDA graph capture" in missing.reason and missing.provisional
    assert empty.cache.stats.builds == 0
    assert found.route == "generated" and found.provisional and not found.tuned
    after = empty.plan(x, weight, bias, 1, 0, 1, 1)  # decided again, now that it may build
    assert after.route == "generated" and not after.provisional and empty.cache.stats.builds == 1


# ---- autocast ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_behaves_as_nn_conv3d(dtype):
    ours, theirs = twin_models(2)
    x = torch.randn(2, 3, 9, 10, 11, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        with strict():  # the generated kernels of the low dtype run
            out = ours(x)
        ref = theirs(x)
        mixed = conv3d(x.to(dtype), ours[0].weight, ours[0].bias, padding=1)  # a float32 weight
        mixed_ref = F.conv3d(x.to(dtype), theirs[0].weight, theirs[0].bias, padding=1)
    assert out.dtype == ref.dtype == mixed.dtype == mixed_ref.dtype == dtype
    assert relative_error(out, ref) <= 1e-2 and relative_error(mixed, mixed_ref) <= 1e-2
    out.float().square().mean().backward()
    ref.float().square().mean().backward()
    exact = copy.deepcopy(theirs).double()  # the same model in float64, without autocast
    exact.zero_grad(set_to_none=True)
    exact(x.double()).square().mean().backward()
    for (name, p), q, r in zip(ours.named_parameters(), theirs.parameters(), exact.parameters()):
        assert p.grad.dtype == q.grad.dtype == torch.float32
        # Both round through the low dtype in every layer, each way; ours may not be much worse.
        ours_err, torch_err = relative_error(p.grad, r.grad), relative_error(q.grad, r.grad)
        assert ours_err <= max(2 * torch_err, 1e-2), f"{name}: {ours_err:.2e} against torch's {torch_err:.2e}"


# ---- which gradients are made -----------------------------------------------------------

@pytest.mark.parametrize("needs", [n for n in itertools.product([False, True], repeat=3) if any(n)],
                         ids=lambda n: "".join(name if need else "-" for name, need in zip("xwb", n)))
def test_each_needs_grad_combination_gives_torchs_gradients(needs, monkeypatch):
    calls = []
    for name in ("input_grad", "weight_grad"):
        original = getattr(conv3d_codegen.backward, name)

        def spy(*args, _original=original, _name=name):  # weight_grad(dispatcher, spec, grad_out, x, need_w, need_b)
            calls.append((_name, tuple(args[4:]) if _name == "weight_grad" else ()))
            return _original(*args)
        monkeypatch.setattr(conv3d_codegen.backward, name, spy)

    spec = ConvSpec(in_channels=4, out_channels=8, kernel_size=3, padding=1)
    tensors = random_inputs(spec, (2, 4, 9, 10, 11))
    ours = [t.clone().requires_grad_(need) for t, need in zip(tensors, needs)]
    theirs = [t.double().requires_grad_(need) for t, need in zip(tensors, needs)]
    out = conv3d(*ours, padding=1)
    grad = torch.randn_like(out)
    out.backward(grad)
    F.conv3d(*theirs, padding=1).backward(grad.double())
    for name, a, b in zip("xwb", ours, theirs):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            assert relative_error(a.grad, b.grad) <= IEEE, name
    need_x, need_w, need_b = needs
    expected = ([("input_grad", ())] if need_x else []) + ([("weight_grad", (need_w, need_b))] if need_w or need_b
                                                           else [])
    assert calls == expected


# ---- deterministic algorithms -----------------------------------------------------------

@pytest.mark.parametrize("case", [pick("base-3x3x3", "float32"), pick("base-3x5x7", "bfloat16"),
                                  pick("stride2", "float32")], ids=str)
def test_deterministic_algorithms_give_bitwise_equal_gradients(case):
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    grad = None
    results = []
    with deterministic():
        for _ in range(2):
            inputs = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
            out = conv3d(*inputs, **spec.functional_args())
            grad = torch.randn_like(out) if grad is None else grad
            out.backward(grad)
            results.append([out] + [t.grad for t in inputs if t is not None])
    for first, second in zip(*results):
        assert torch.equal(first, second)


# ---- training ---------------------------------------------------------------------------

def test_training_follows_the_loss_curve_of_nn_conv3d():
    ours, theirs = twin_models(3)
    x, target = torch.randn(2, 3, 9, 10, 11, device="cuda"), torch.randn(2, 4, 5, 5, 6, device="cuda")
    curves = []
    for model in (ours, theirs):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
        losses = []
        with cudnn_precision("ieee"):  # torch in IEEE float32 too, not TF32
            for _ in range(10):
                optimizer.zero_grad(set_to_none=True)
                loss = F.mse_loss(model(x), target)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        curves.append(torch.tensor(losses, dtype=torch.float64))
    ours_curve, torch_curve = curves
    # IEEE float32 with another summation order, over ten steps of momentum SGD
    assert relative_error(ours_curve, torch_curve) <= 1e-4, (ours_curve, torch_curve)
    assert ours_curve[-1] < ours_curve[0]


# ---- the torch route without the op ---------------------------------------------------

def _ops_entered(call) -> int:
    """How many times `call` entered the op conv3d_codegen::conv3d (the profiler's record)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = call()
    torch.cuda.synchronize()
    return out, sum(e.count for e in prof.key_averages() if e.key == "conv3d_codegen::conv3d")


def _assert_recorded_without_the_op(call) -> None:
    """A gradient is needed, eagerly: autograd records the call through ops._EagerConv3d, the
    op's formula without the op's entry cost."""
    out, entered = _ops_entered(call)
    assert entered == 0 and type(out.grad_fn).__name__ == "_EagerConv3dBackward", (entered, out.grad_fn)


def test_a_call_decided_for_torch_skips_the_op_only_where_the_op_adds_nothing(tmp_path):
    spec = pick("base-3x3x3", "float32").spec
    x, weight, bias = random_inputs(spec, (2, spec.in_channels, 9, 10, 11))
    call = lambda: conv3d(x, weight, bias, padding=spec.padding)  # noqa: E731
    with cudnn_precision("ieee"):
        ref = F.conv3d(x, weight, bias, padding=spec.padding)
    with conv3d_codegen.using(Dispatcher(KernelCache(tmp_path), mode="off")):
        out, entered = _ops_entered(call)
        assert entered == 1, "the first call decides, inside the op"
        assert torch.equal(out, ref)
        out, entered = _ops_entered(call)
        assert entered == 0, "decided for torch: F.conv3d without the op"
        assert torch.equal(out, ref)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert _ops_entered(call)[1] >= 1, "autocast: the op casts (and enters itself again)"
        weight.requires_grad_(True)
        _assert_recorded_without_the_op(call)
        with torch.no_grad():
            assert _ops_entered(call)[1] == 0
        weight.requires_grad_(False)
        with strict(), pytest.raises(conv3d_codegen.dispatch.FallbackError):
            call()  # mode 'off' is a fallback, which strict mode refuses: the lookup does not hide it


def test_a_call_decided_for_a_generated_kernel_runs_it_without_the_op(dispatcher):
    case = pick("base-3x3x3", "float32")
    spec = case.spec
    x, weight, bias = random_inputs(spec, case.input_shape)
    call = lambda: conv3d(x, weight, bias, padding=spec.padding)  # noqa: E731
    first = call()  # decides, inside the op
    assert dispatcher.plan_for(spec, x, weight, bias).route == "generated"
    out, entered = _ops_entered(call)
    assert entered == 0 and torch.equal(out, first) and out.is_contiguous()
    ref = F.conv3d(x.double(), weight.double(), bias.double(), padding=spec.padding)
    assert relative_error(out, ref) <= IEEE
    weight.requires_grad_(True)
    _assert_recorded_without_the_op(call)
