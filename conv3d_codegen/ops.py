"""The functional op: torch.nn.functional.conv3d through a generated kernel where one applies.

conv3d() normalizes its arguments and calls the custom op `conv3d_codegen::conv3d`
(torch.ops.conv3d_codegen.conv3d), which torch.compile, CUDA graphs, autocast, the fake
tensors of tracing and opcheck all see as one operator:

    conv3d(Tensor input, Tensor weight, Tensor? bias, int[3] stride, int[3] padding,
           int[3] dilation, int groups, bool padding_same, str precision) -> Tensor

The input is batched (5-D; conv3d() adds and removes the batch dimension of a 4-D one).
padding_same stands for padding='same' (the odd extra zero goes after, as torch puts it);
`padding` is then unused. Its implementation asks the process's current dispatcher
(dispatch.default_dispatcher(), set with dispatch.using()) for a plan, runs the generated
kernel into an output torch allocates, or torch's F.conv3d in the requested precision. The
output has the memory format F.conv3d would give it (torch's own choice: on CUDA,
channels_last_3d where the input or the weight is channels_last_3d, else contiguous), and
so has the fake implementation's. A channels_last_3d input runs the NDHWC kernels (spec
layout 'ndhwc'); the weight is made contiguous for every kernel.

Its autograd formula calls two more ops, `conv3d_input_grad` and `conv3d_weight_grad`
(backward.input_grad and backward.weight_grad inside), each only when a gradient it makes
is needed; they use the dispatcher current when backward runs. Eager calls that record
autograd (plain tensors, no autocast, no dispatch mode) run the same implementations and
formula through an autograd.Function instead (_EagerConv3d): entering a custom op costs
~300 us of host time, three of them a training step. The gradient kernels are
NCDHW only: for a channels_last_3d call grad_out and the input are made contiguous for
them, and the gradient of the input is returned in the forward output's memory format (as
torch's convolution backward returns it). Under autocast (CUDA) the
floating tensors are cast to the autocast dtype first, as nn.Conv3d's are. The generated
kernels are deterministic, so torch.use_deterministic_algorithms(True) needs nothing more;
where torch runs, it honours the setting itself. During CUDA graph capture the dispatcher
builds and tunes nothing (see dispatch.py); kernels launch on torch's current stream.

CPU and meta tensors, dtypes other than float32/float16/bfloat16,
empty tensors and arguments the op cannot express go to F.conv3d directly, which raises its
own errors in its own words. Eagerly, such a call is still shown to the dispatcher, so its
reason is logged once and strict mode refuses it; under torch.compile it is not (and uses
torch's TF32 setting rather than `precision`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import backward
from .dispatch import Dispatcher, cudnn_precision, default_dispatcher, using
from .kernel import launch_args
from .spec import ConvSpec

PRECISIONS = ("ieee", "tf32")
_OP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *, precision: str = "ieee") -> torch.Tensor:
    """torch.nn.functional.conv3d, with the same arguments and results.

    `precision` (keyword only) is 'ieee' (float32 accuracy: float32 arithmetic, or 3xTF32 on
    tensor cores where autotuning verified it at float32's bar) or 'tf32' (float32 inputs may
    be multiplied in TF32); it applies to float32 only.

    This is the Python torch.compile traces (fullgraph): no pydantic, no logging here.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    args = _op_arguments(stride, padding, dilation, groups)
    if args is not None and _op_takes(input, weight, bias):
        unbatched = input.dim() == 4
        x = input.unsqueeze(0) if unbatched else input
        out = _decided_without_op(x, weight, bias, args, precision)
        if out is None and _eager_with_autograd(x, weight, bias):
            out = _EagerConv3d.apply(x, weight, bias, *args, precision)
        if out is None:
            out = torch.ops.conv3d_codegen.conv3d(x, weight, bias, *args, precision)
        return out.squeeze(0) if unbatched else out
    if torch.compiler.is_compiling():
        return F.conv3d(input, weight, bias, stride, padding, dilation, groups)
    if isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor):
        # shown to the dispatcher so that the reason is logged once and strict mode refuses it
        default_dispatcher().plan(input.unsqueeze(0) if input.dim() == 4 else input, weight, bias, stride,
                                  padding, dilation, groups, precision)
        with cudnn_precision(precision, input.dtype):
            return F.conv3d(input, weight, bias, stride, padding, dilation, groups)
    return F.conv3d(input, weight, bias, stride, padding, dilation, groups)


def run(dispatcher: Dispatcher, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
        stride=1, padding=0, dilation=1, groups: int = 1, precision: str = "ieee") -> torch.Tensor:
    """conv3d() with `dispatcher` as the current one for the call (tests, the CLI and the
    benchmarks use their own, over their own cache). A backward pass run later uses the
    dispatcher current then."""
    with using(dispatcher):
        return conv3d(input, weight, bias, stride, padding, dilation, groups, precision=precision)


# ---- what goes to the op ------------------------------------------------------------

def _op_arguments(stride, padding, dilation, groups) -> tuple | None:
    """(stride, padding, dilation, groups, padding_same) as the op takes them, or None where
    the op cannot express them (torch then says what is wrong)."""
    padding_same = isinstance(padding, str) and padding == "same"
    if isinstance(padding, str):
        padding = 0 if padding in ("same", "valid") else None
    triples = (_triple(stride), _triple(padding), _triple(dilation))
    if triples[0] is None or triples[1] is None or triples[2] is None or not _is_int(groups):
        return None
    return (*triples, groups, padding_same)


def _triple(value) -> list[int] | None:
    if _is_int(value):
        return [value, value, value]
    if isinstance(value, (list, tuple)) and len(value) in (1, 3):
        for v in value:
            if not _is_int(v):
                return None
        return [value[0]] * 3 if len(value) == 1 else list(value)
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _op_takes(input, weight, bias) -> bool:
    """Whether the op serves these tensors: floating CUDA tensors of one device, 4 or 5
    dimensions, nothing empty, in any memory format (contiguous, channels_last_3d or strided).
    Dtypes may differ: under autocast the op casts them, otherwise torch raises inside it."""
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))):
        return False
    if not input.is_cuda or input.dim() not in (4, 5) or weight.dim() != 5:
        return False
    for t in (input, weight) if bias is None else (input, weight, bias):
        if t.device != input.device or t.dtype not in _OP_DTYPES or t.numel() == 0:
            return False
    return True


def _decided_without_op(x, weight, bias, args, precision) -> torch.Tensor | None:
    """The result of a call the dispatcher has already decided, run without the custom op
    where the op would add nothing: eagerly, with autograd recording nothing, outside
    autocast, on plain tensors with no dispatch mode active; torch's F.conv3d, or the
    generated kernel for NCDHW tensors. Else None (the call goes to the op).

    Entering the custom op costs 60-300 us of Python a call on the H100's host (autograd
    wrapper, redispatch, the dynamo-disabled impl); after the benchmark's L2 flush, or
    behind any short kernel, the GPU idles that long: a pick autotuning timed faster than
    torch then ran slower (pointwise fp32 0.74x, depthwise 1.8x instead of 5x)."""
    if not _plain_eager(x, weight, bias) or _records_autograd(x, weight, bias):
        return None
    conv = _functional_args(*args)
    precision = _precision_for(precision, x.dtype)
    plan = default_dispatcher().decided(x, weight, bias, precision=precision, **conv)
    if plan is None:
        return None
    if plan.kernel is None:
        with cudnn_precision(precision, x.dtype):
            return F.conv3d(x, weight, bias, **conv)
    if x.is_contiguous() and weight.is_contiguous() and plan.kernel.memory_format == torch.contiguous_format:
        return _launch(plan, x, weight, bias, torch.contiguous_format)  # NCDHW in, NCDHW out, as torch
    return None


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(*tensors) -> bool:
    """Eager, outside autocast, no dispatch or torch-function mode, plain tensors (None allowed)."""
    if (torch.compiler.is_compiling() or torch.is_autocast_enabled("cuda")
            or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()):
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


def _records_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _eager_with_autograd(x, weight, bias) -> bool:
    """Whether the call goes through _EagerConv3d: eager on plain tensors, recording autograd."""
    return _plain_eager(x, weight, bias) and _records_autograd(x, weight, bias)


# ---- the ops ------------------------------------------------------------------------

def _conv3d_impl(input, weight, bias, stride, padding, dilation, groups, padding_same, precision):
    """The forward: the op's implementation, and _EagerConv3d's."""
    conv = _functional_args(stride, padding, dilation, groups, padding_same)
    precision = _precision_for(precision, input.dtype)
    fmt = _output_format(input, weight, bias, stride, padding, dilation, groups, padding_same)
    if fmt == torch.channels_last_3d:  # e.g. an NCDHW input with a channels_last_3d weight: run NDHWC
        input = input.contiguous(memory_format=fmt)
    plan = default_dispatcher().plan(input, weight, bias, precision=precision, **conv)
    if plan.kernel is None:
        with cudnn_precision(precision, input.dtype):
            return F.conv3d(input, weight, bias, **conv)
    return _launch(plan, input, weight, bias, fmt)


_conv3d_op = torch.library.custom_op(
    "conv3d_codegen::conv3d", _conv3d_impl, mutates_args=(),
    schema="(Tensor input, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, int[3] dilation, "
           "int groups, bool padding_same, str precision) -> Tensor")


def _launch(plan, input, weight, bias, fmt: torch.memory_format) -> torch.Tensor:
    """Run the plan's generated kernel into a new output in memory format `fmt`."""
    spec, kernel = plan.spec, plan.kernel
    x, weight = input.contiguous(memory_format=kernel.memory_format), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    out = torch.empty((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), dtype=x.dtype,
                      device=x.device, memory_format=kernel.memory_format)
    # a copy only where the kernel's layout is not torch's format (one channel, size-1 dims)
    return kernel(x, weight, bias, out, launch_args(spec, x.shape)).contiguous(memory_format=fmt)


@_conv3d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, padding_same, precision):
    # torch's own shape rules, errors and memory format, on tensors without data
    conv = _functional_args(stride, padding, dilation, groups, padding_same)
    return F.conv3d(input, weight, bias, **conv)


def _output_format(input, weight, bias, stride, padding, dilation, groups, padding_same) -> torch.memory_format:
    """The memory format F.conv3d gives its output for these tensors: torch's own choice of
    backend and of that backend's format, as the fake implementation gets it."""
    if padding_same:  # the symmetric part; torch pads an odd extra zero on the input first
        padding = [dil * (k - 1) // 2 for k, dil in zip(weight.shape[2:], dilation)]
    try:
        backend = torch._C._select_conv_backend(input, weight, bias, list(stride), list(padding), list(dilation),
                                                False, [0, 0, 0], groups)
        return torch._C._conv_determine_backend_memory_format(input, weight, backend)
    except (RuntimeError, TypeError, ValueError):  # arguments torch refuses: F.conv3d raises its own error
        return torch.contiguous_format


def _input_grad_impl(grad_out, weight, input_shape, spec):
    """`spec`: the ConvSpec of the forward call, as canonical JSON. The gradient kernels are
    NCDHW: grad_out is made contiguous and the result is contiguous (the autograd formula
    gives it the forward output's memory format)."""
    return backward.input_grad(default_dispatcher(), _spec(spec), grad_out.contiguous(), weight.contiguous(),
                               tuple(input_shape)).contiguous()


_input_grad_op = torch.library.custom_op(
    "conv3d_codegen::conv3d_input_grad", _input_grad_impl, mutates_args=(),
    schema="(Tensor grad_out, Tensor weight, SymInt[] input_shape, str spec) -> Tensor")


@_input_grad_op.register_fake
def _(grad_out, weight, input_shape, spec):
    return grad_out.new_empty(input_shape)


def _weight_grad_impl(grad_out, input, spec, need_weight, need_bias):
    """Gradients of the weight and the bias; None where not needed or there is no bias."""
    spec = _spec(spec)
    grad_w, grad_b = backward.weight_grad(default_dispatcher(), spec, grad_out.contiguous(), input.contiguous(),
                                          need_weight, need_bias and spec.bias)
    return (grad_w.contiguous() if need_weight else None,
            grad_b.contiguous() if need_bias and spec.bias else None)


_weight_grad_op = torch.library.custom_op(
    "conv3d_codegen::conv3d_weight_grad", _weight_grad_impl, mutates_args=(),
    schema="(Tensor grad_out, Tensor input, str spec, bool need_weight, bool need_bias) -> (Tensor?, Tensor?)")


@_weight_grad_op.register_fake
def _(grad_out, input, spec, need_weight, need_bias):
    spec = _spec(spec)
    return (input.new_empty(spec.weight_shape) if need_weight else None,
            input.new_empty(spec.out_channels) if need_bias and spec.bias else None)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, padding_same, precision = inputs
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    ctx.spec = _spec_json(tuple(int(s) for s in weight.shape), bias is not None, input.dtype, tuple(stride),
                          tuple(padding), tuple(dilation), groups, padding_same, precision)
    ctx.input_shape = list(input.shape)
    # torch returns the gradient of the input in the format it chose for the output
    ctx.channels_last = not output.is_contiguous() and output.is_contiguous(memory_format=torch.channels_last_3d)
    ctx.save_for_backward(input if need_weight or need_bias else None, weight if need_input else None)


def _backward(ctx, grad_out, input_grad=None, weight_grad=None):
    """The autograd formula, through the gradient ops (or, for _EagerConv3d, their implementations)."""
    input_grad = input_grad or torch.ops.conv3d_codegen.conv3d_input_grad
    weight_grad = weight_grad or torch.ops.conv3d_codegen.conv3d_weight_grad
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = input_grad(grad_out, weight, ctx.input_shape, ctx.spec)
        if ctx.channels_last:
            grad_input = grad_input.contiguous(memory_format=torch.channels_last_3d)
    if need_weight or need_bias:
        grad_weight, grad_bias = weight_grad(grad_out, input, ctx.spec, need_weight, need_bias)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


_conv3d_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerConv3d(torch.autograd.Function):
    """The op and its autograd formula for eager calls that record autograd, without the
    custom op's entry costs: each of the three ops (forward, gradients of the input and of the
    weight) cost ~300 us of host time a call on the H100's host, ~1 ms a training step more
    than torch's, which a GPU step shorter than that then waited on. Same implementations,
    plans and kernels; torch.compile, autocast and dispatch modes keep going through the op."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups, padding_same, precision):
        return _conv3d_impl(input, weight, bias, stride, padding, dilation, groups, padding_same, precision)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out, _input_grad_impl, _weight_grad_impl)


def _autocast(keyset, input, weight, bias, *arguments):
    """nn.Conv3d under autocast: floating CUDA tensors in the autocast dtype (not float64),
    then the op with autocast off."""
    dtype = torch.get_autocast_dtype("cuda")

    def cast(t):
        eligible = t is not None and t.is_floating_point() and t.is_cuda and t.dtype != torch.float64
        return t.to(dtype) if eligible else t

    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)):
        return torch.ops.conv3d_codegen.conv3d.default(cast(input), cast(weight), cast(bias), *arguments)


_library = torch.library.Library("conv3d_codegen", "FRAGMENT")  # kept: the registration lives as long as it
_library.impl("conv3d", _autocast, "AutocastCUDA", with_keyset=True)


# ---- helpers the ops share ----------------------------------------------------------

def _functional_args(stride, padding, dilation, groups, padding_same) -> dict:
    return dict(stride=stride, padding="same" if padding_same else padding, dilation=dilation, groups=groups)


def _precision_for(precision: str, dtype: torch.dtype) -> str:
    """TF32 is for float32; other dtypes always accumulate in float32 ('ieee')."""
    return precision if dtype == torch.float32 else "ieee"


@functools.cache
def _spec_json(weight_shape, bias, dtype, stride, padding, dilation, groups, padding_same, precision) -> str:
    """The forward call's ConvSpec as canonical JSON: how the backward ops receive it."""
    co, cig, *kernel_size = weight_shape
    return ConvSpec(in_channels=cig * groups, out_channels=co, kernel_size=tuple(kernel_size), stride=stride,
                    padding="same" if padding_same else padding, dilation=dilation, groups=groups, bias=bias,
                    dtype=dtype, precision=_precision_for(precision, dtype)).canonical_json()


@functools.cache
def _spec(text: str) -> ConvSpec:
    return ConvSpec.model_validate_json(text)
