"""channels_last_3d (layout 'ndhwc'): the NDHWC kernels against torch.nn.functional.conv3d
in float64 on fresh random inputs, outputs poisoned (NaN) before each run; the memory format
of every result equal to torch's; gradients, opcheck and a channels_last_3d model."""
import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import Conv3d, strict
from conv3d_codegen.autotune import candidates
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.render import Tiles, render_generic
from conv3d_codegen.spec import ConvSpec

from .matrix import CASES, Case, pick

CL = torch.channels_last_3d
CHECKED_BATCH = 2  # the seed workloads are compared on their first samples: float64 is slow


def channels_last(case: Case) -> Case:
    return Case(case.name, case.spec.model_copy(update={"layout": "ndhwc"}), case.input_shape)


def tf32(case: Case) -> Case:
    return Case(case.name.replace("float32", "tf32"), case.spec.model_copy(update={"precision": "tf32"}),
                case.input_shape)


# The forward matrix (odd sizes, padding, stride, dilation, groups, depthwise, the seeds; float32,
# float16, bfloat16), plus tf32 on a few.
CL_CASES = [channels_last(c) for c in CASES]
CL_CASES += [tf32(channels_last(pick(p, "float32"))) for p in ("base-3x3x3", "stride1x2x3", "padsame", "seed-b")]


@pytest.fixture(scope="module")
def built(dispatcher):
    """Every NDHWC kernel of the matrix, built in parallel up front."""
    results = dispatcher.prebuild(case.spec for case in CL_CASES)
    failures = {spec.tag: err for spec, err in results.items() if isinstance(err, Exception)}
    assert not failures, failures
    return dispatcher


def inputs(spec: ConvSpec, input_shape) -> tuple:
    """Fresh random input (channels_last_3d), weight and bias."""
    x, weight, bias = random_inputs(spec, input_shape)
    return x.contiguous(memory_format=CL), weight, bias


def reference(x, weight, bias, spec: ConvSpec) -> torch.Tensor:
    x = x[:CHECKED_BATCH]
    return F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **spec.functional_args())


def assert_close(out: torch.Tensor, ref: torch.Tensor, spec: ConvSpec):
    err = relative_error(out[:CHECKED_BATCH], ref)
    assert err <= tolerance(spec), f"relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten output)"


def torch_format(x, weight, bias, spec: ConvSpec) -> tuple[int, ...]:
    """The strides torch's own conv3d gives its output, in the same dtype."""
    return F.conv3d(x, weight, bias, **spec.functional_args()).stride()


@pytest.mark.parametrize("case", CL_CASES, ids=str)
def test_ndhwc_kernel_matches_torch(built, case: Case):
    spec = case.spec
    x, weight, bias = inputs(spec, case.input_shape)
    with strict():
        plan = built.plan(x, weight, bias, spec.stride, spec.padding, spec.dilation, spec.groups, spec.precision)
    assert plan.route == "generated" and plan.spec == spec and plan.kernel.memory_format == CL
    poisoned = torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                          dtype=x.dtype, device=x.device).contiguous(memory_format=CL)
    out = plan.kernel(x, weight, bias, poisoned, launch_args(spec, x.shape))
    assert out.data_ptr() == poisoned.data_ptr()  # written in place, no temporary
    assert_close(out, reference(x, weight, bias, spec), spec)


@pytest.mark.parametrize("case", CL_CASES, ids=str)
def test_the_op_returns_torchs_memory_format(built, case: Case):
    spec = case.spec
    x, weight, bias = inputs(spec, case.input_shape)
    with strict():
        out = run(built, x, weight, bias, precision=spec.precision, **spec.functional_args())
    assert out.stride() == torch_format(x, weight, bias, spec)
    assert_close(out, reference(x, weight, bias, spec), spec)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generic_ndhwc_kernel_serves_what_the_direct_one_does_not(built, dtype):
    spec = ConvSpec(in_channels=2, out_channels=4, kernel_size=(9, 9, 5), padding=4, dtype=dtype, layout="ndhwc")
    x, weight, bias = inputs(spec, (2, 2, 11, 12, 13))
    out = run(built, x, weight, bias, padding=4)
    plan = built.plan(x, weight, bias, 1, 4, 1, 1)
    assert plan.route == "generic" and plan.kernel.source.layout == "ndhwc"
    assert out.stride() == torch_format(x, weight, bias, spec)
    assert_close(out, reference(x, weight, bias, spec), spec)
    narrow = inputs(spec, (1, 2, 11, 12, 3))  # output width 3 < the 4 a thread computes
    assert_close(run(built, *narrow, padding=4), reference(*narrow, spec), spec)


@pytest.mark.parametrize("case", [channels_last(c) for c in CASES if c.name.startswith(("base-3x5x7", "pad2x1x0",
                                                                                         "padsame"))], ids=str)
def test_generic_ndhwc_kernel_matches_torch(built, case: Case):
    spec = case.spec
    kernel = built.loader.load(render_generic(spec.dtype, "ndhwc"), Target.for_device())
    x, weight, bias = inputs(spec, case.input_shape)
    poisoned = torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                          dtype=x.dtype, device=x.device).contiguous(memory_format=CL)
    assert_close(kernel(x, weight, bias, poisoned, launch_args(spec, x.shape)), reference(x, weight, bias, spec), spec)


def test_which_inputs_are_ndhwc(built):
    case = channels_last(pick("base-3x3x3", "float32"))
    spec = case.spec
    x, weight, bias = inputs(spec, case.input_shape)
    with strict():
        # a strided view of a channels_last_3d tensor: torch keeps the format, and so do we
        view = torch.randn(5, 4, 17, 9, 66, device="cuda").contiguous(memory_format=CL)[..., ::2]
        out = run(built, view, weight, bias)
        assert out.stride() == torch_format(view, weight, bias, spec)
        assert_close(out, reference(view, weight, bias, spec), spec)
        # an NCDHW input with a channels_last_3d weight: torch returns channels_last_3d
        plain, cl_weight = x.contiguous(), weight.contiguous(memory_format=CL)
        out = run(built, plain, cl_weight, bias)
        assert out.stride() == torch_format(plain, cl_weight, bias, spec)
        assert_close(out, reference(plain, weight, bias, spec), spec)
    # one input channel: contiguous in both formats, so NCDHW
    one = ConvSpec(in_channels=1, out_channels=8, kernel_size=3)
    x1, w1, b1 = inputs(one, (2, 1, 9, 10, 11))
    assert x1.is_contiguous() and built.plan(x1, w1, b1, 1, 0, 1, 1).spec.layout == "ncdhw"
    out = run(built, x1, w1, b1)
    assert out.stride() == torch_format(x1, w1, b1, one)
    assert_close(out, reference(x1, w1, b1, one), one)


def test_autotuning_an_ndhwc_spec_times_the_direct_tiles_and_torch(tmp_path, cache_root):
    case = channels_last(pick("base-3x3x3", "bfloat16"))
    spec = case.spec
    assert all(isinstance(t, Tiles) for t in candidates(spec))  # the tensor-core template is NCDHW only
    tuner = Dispatcher(KernelCache(cache_root), autotune=True)
    x, weight, bias = inputs(spec, (2, *case.input_shape[1:]))
    out = run(tuner, x, weight, bias)
    plan = tuner.plan(x, weight, bias, 1, 0, 1, 1)
    assert plan.tuned and plan.spec.layout == "ndhwc"
    assert out.stride() == torch_format(x, weight, bias, spec)
    assert_close(out, reference(x, weight, bias, spec), spec)


GRADIENT_CASES = [pick("base-3x3x3", "float32"), pick("padsame", "float32"), pick("stride1x2x3", "float32"),
                  pick("groups2", "float32"), pick("depthwise", "float32"), pick("base-3x5x7", "bfloat16")]


@pytest.mark.parametrize("case", [channels_last(c) for c in GRADIENT_CASES], ids=str)
@pytest.mark.parametrize("weight_format", ["contiguous", "channels_last_3d"])
def test_gradients_of_a_channels_last_input_and_weight(built, case: Case, weight_format):
    spec = case.spec
    x, weight, bias = inputs(spec, case.input_shape)
    if weight_format == "channels_last_3d":
        weight = weight.contiguous(memory_format=CL)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    with strict():
        out = run(built, x, weight, bias, **spec.functional_args())
    grad = torch.randn_like(out)  # channels_last_3d, as out is
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    F.conv3d(*ref_inputs, **spec.functional_args()).backward(grad.double())
    for name, ours, ref in zip("xwb", (x.grad, weight.grad, bias.grad), ref_inputs):
        err = relative_error(ours, ref.grad)
        assert err <= tolerance(spec), f"{name}: relative error {err:.2e}"
    theirs = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    F.conv3d(*theirs, **spec.functional_args()).backward(grad)
    assert same_layout(x.grad, theirs[0].grad) and same_layout(weight.grad, theirs[1].grad)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal strides along every dimension longer than 1 (a size-1 dimension's stride is arbitrary)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


@pytest.mark.parametrize("case", [channels_last(pick("base-3x3x3", "float32")),
                                  channels_last(pick("stride1x2x3", "bfloat16")),
                                  channels_last(pick("padsame", "float32")),
                                  channels_last(pick("groups2", "bfloat16"))], ids=str)
def test_opcheck_on_channels_last_inputs(built, case: Case):
    spec = case.spec
    x, weight, bias = inputs(spec, (2, *case.input_shape[1:]))
    x, weight = x.requires_grad_(), weight.requires_grad_()
    bias = bias.requires_grad_() if bias is not None else None
    padding = [0, 0, 0] if spec.padding == "same" else list(spec.padding)
    torch.library.opcheck(torch.ops.conv3d_codegen.conv3d,
                          (x, weight, bias, list(spec.stride), padding, list(spec.dilation), spec.groups,
                           spec.padding == "same", spec.precision))


def cnn(conv) -> torch.nn.Sequential:
    return torch.nn.Sequential(conv(3, 8, 3, padding=1), torch.nn.ReLU(),
                               conv(8, 8, (1, 3, 5), stride=2, padding=(0, 1, 2)), torch.nn.ReLU(),
                               conv(8, 4, 3, padding="same"))


def test_conv3d_module_in_a_channels_last_model(built):
    torch.manual_seed(0)
    theirs = cnn(torch.nn.Conv3d).cuda().to(memory_format=CL)
    ours = cnn(Conv3d).cuda().to(memory_format=CL)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 17, 9, 33, device="cuda").contiguous(memory_format=CL)
    with strict():  # every layer runs its NDHWC kernel
        out = ours(x)
    assert out.stride() == theirs(x).stride()
    out.square().mean().backward()
    reference = theirs.double()
    ref = reference(x.double())
    ref.square().mean().backward()
    assert relative_error(out, ref) <= 1e-5
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, q.grad) <= 1e-5, name
