"""Conv3d: a drop-in torch.nn.Conv3d that runs generated kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import conv3d
from .spec import ConvSpec

PRECISIONS = ("ieee", "tf32")


class Conv3d(torch.nn.Conv3d):
    """torch.nn.Conv3d with the same constructor, parameters and state_dict.

    Each forward picks, for its input, a kernel generated for this configuration (built
    once, then loaded from the disk cache), or falls back with a logged reason. `precision`
    (keyword only, float32 only): 'ieee' (default) or 'tf32'.

    A channels_last_3d model (`model.to(memory_format=torch.channels_last_3d)`, inputs in that
    format) runs the NDHWC kernels and returns what nn.Conv3d returns, channels_last_3d; the
    kernels read the weight in torch's order, so a channels_last_3d weight is copied to a
    contiguous one on each call (a small copy beside the activations).
    """

    def __init__(self, *args, precision: str = "ieee", **kwargs):
        super().__init__(*args, **kwargs)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision

    @property
    def spec(self) -> ConvSpec:
        return ConvSpec.from_module(self, precision=self._precision_for(self.weight))

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.padding_mode != "zeros":  # as nn.Conv3d: pad explicitly, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv3d(input, weight, bias, self.stride, 0, self.dilation, self.groups,
                          precision=self._precision_for(weight))
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                      precision=self._precision_for(weight))

    def _precision_for(self, weight: torch.Tensor) -> str:
        return self.precision if weight.dtype == torch.float32 else "ieee"

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", precision={self.precision!r}" if self.precision != "ieee" else "")
