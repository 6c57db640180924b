"""Gradients of conv3d: of the input (dgrad), of the weight (wgrad) and of the bias.

`input_grad` and `weight_grad` are what the autograd formula of the op calls. Each runs a
generated kernel where one applies and torch's convolution_backward otherwise, in the
spec's precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Dispatcher, cudnn_precision
from .spec import ConvSpec


def input_grad(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
               input_shape: tuple[int, ...]) -> torch.Tensor:
    """Gradient of the input (shape `input_shape`, contiguous) given grad_out and the weight."""
    x = torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device)  # only its shape is read
    return torch_grads(spec, grad_out, x, weight, (True, False, False))[0].contiguous()


def weight_grad(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, x: torch.Tensor,
                need_weight: bool = True, need_bias: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the weight and the bias (None where not needed, or the spec has no bias)."""
    weight = torch.empty(spec.weight_shape, dtype=x.dtype, device=x.device)  # only its shape is read
    _, grad_w, grad_b = torch_grads(spec, grad_out, x, weight, (False, need_weight, need_bias and spec.bias))
    return grad_w, grad_b


def torch_grads(spec: ConvSpec, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                needs: tuple[bool, bool, bool]):
    """Gradients of input, weight and bias through torch's convolution_backward."""
    with cudnn_precision(spec.precision, x.dtype):
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
