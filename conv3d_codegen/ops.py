"""The functional op: torch.nn.functional.conv3d through a generated kernel where one applies.

Backward uses torch's convolution_backward for now; generated dgrad/wgrad come later.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Dispatcher, Plan, cudnn_precision, default_dispatcher
from .kernel import launch_args
from .spec import ConvSpec


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *, precision: str = "ieee") -> torch.Tensor:
    """torch.nn.functional.conv3d, with the same arguments and results.

    `precision` (keyword only) is 'ieee' (float32 arithmetic) or 'tf32' (float32 inputs may
    be multiplied in TF32); it applies to float32 only.
    """
    return run(default_dispatcher(), input, weight, bias, stride, padding, dilation, groups, precision)


def run(dispatcher: Dispatcher, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
        stride=1, padding=0, dilation=1, groups: int = 1, precision: str = "ieee") -> torch.Tensor:
    """conv3d through a given dispatcher (tests use their own, over their own cache)."""
    if input.is_cuda and input.is_floating_point() and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")  # as autocast treats conv3d: all to the low dtype
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    batched = input.unsqueeze(0) if input.dim() == 4 else input
    plan = dispatcher.plan(batched, weight, bias, stride, padding, dilation, groups, precision)
    if plan.route == "torch":
        with cudnn_precision(precision, input.dtype):
            return F.conv3d(input, weight, bias, stride, padding, dilation, groups)
    out = _GeneratedConv3d.apply(batched, weight, bias, plan)
    return out.squeeze(0) if input.dim() == 4 else out


class _GeneratedConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan):
        spec = plan.spec
        x, weight = x.contiguous(), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        out = torch.empty((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])),
                          dtype=x.dtype, device=x.device)
        plan.kernel(x, weight, bias, out, launch_args(spec, x.shape))
        ctx.save_for_backward(x, weight)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        return (*torch_backward(grad_out, x, weight, ctx.spec, ctx.needs_input_grad[:3]), None)


def torch_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec,
                   needs: tuple[bool, bool, bool]):
    """Gradients of input, weight and bias through torch's convolution_backward."""
    with cudnn_precision(spec.precision, x.dtype):
        return _convolution_backward(grad_out, x, weight, spec, needs)


def _convolution_backward(grad_out, x, weight, spec: ConvSpec, needs):
    before, after = spec.pad_before, spec.pad_after
    if before != after:  # 'same' with an odd total: the extra zero goes after, as torch pads it
        x = F.pad(x, (0, after[2] - before[2], 0, after[1] - before[1], 0, after[0] - before[0]))
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [spec.out_channels] if spec.bias else None, list(spec.stride),
        list(before), list(spec.dilation), False, [0, 0, 0], spec.groups,
        [needs[0], needs[1], needs[2] and spec.bias])
    if grad_x is not None and before != after:
        d, h, w = (size - a + b for size, a, b in zip(x.shape[2:], after, before))
        grad_x = grad_x[:, :, :d, :h, :w]
    return grad_x, grad_w, grad_b
