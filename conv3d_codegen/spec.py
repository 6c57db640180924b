"""ConvSpec: the one place a Conv3d configuration lives.

Everything downstream (rendering, the cache key, dispatch) reads a ConvSpec, never loose
arguments. Validation speaks in the words torch uses for the same mistakes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

Triple = tuple[int, int, int]

DTYPES = ("float32", "float16", "bfloat16")
DTYPE_TAGS = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_DTYPE_ALIASES = {
    "float32": "float32", "float": "float32", "fp32": "float32", "f32": "float32",
    "float16": "float16", "half": "float16", "fp16": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Memory layout of the input and output. The weight is always in torch's (co, ci, kd, kh, kw)
# order, contiguous: a channels_last_3d weight is made contiguous by the caller.
LAYOUTS = ("ncdhw", "ndhwc")
MEMORY_FORMATS = {"ncdhw": torch.contiguous_format, "ndhwc": torch.channels_last_3d}
_LAYOUT_ALIASES = {"ncdhw": "ncdhw", "contiguous": "ncdhw", "contiguous_format": "ncdhw",
                   "ndhwc": "ndhwc", "channels_last": "ndhwc", "channels_last_3d": "ndhwc"}


def layout_of(x: torch.Tensor) -> str:
    """'ndhwc' for a 5-D tensor dense in channels_last_3d and not plain contiguous, else 'ncdhw'
    (a tensor contiguous in both formats, e.g. one channel, is NCDHW; anything else strided is
    made contiguous, so it is NCDHW too)."""
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return "ndhwc"
    return "ncdhw"


_INTS = re.compile(r"^-?\d+(?:[x,]-?\d+)*$")


def _triple(value: Any, name: str) -> Any:
    """int, 'A' -> (A, A, A); 'AxBxC', 'A,B,C' or a list -> tuple. Anything else goes to pydantic."""
    if isinstance(value, str) and _INTS.match(value):
        value = [int(p) for p in re.split("[x,]", value)]
        value = value[0] if len(value) == 1 else value
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value)
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise ValueError(f"{name} must be an int or a tuple of 3 ints, got {tuple(value)}")
        return tuple(value)
    return value


class ConvSpec(BaseModel):
    """A 3D convolution as nn.Conv3d describes it, plus dtype, layout and math precision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_channels: int
    out_channels: int
    kernel_size: Triple
    stride: Triple = (1, 1, 1)
    padding: Triple | Literal["same"] = (0, 0, 0)
    dilation: Triple = (1, 1, 1)
    groups: int = 1
    bias: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    layout: Literal["ncdhw", "ndhwc"] = "ncdhw"
    precision: Literal["ieee", "tf32"] = "ieee"

    # ---- normalization (before pydantic's type checks) -------------------------------

    @field_validator("kernel_size", "stride", "dilation", mode="before")
    @classmethod
    def _sizes_to_triple(cls, value: Any, info) -> Any:
        return _triple(value, info.field_name)

    @field_validator("padding", mode="before")
    @classmethod
    def _padding_to_triple(cls, value: Any) -> Any:
        if isinstance(value, str) and not _INTS.match(value):
            if value not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {value!r}, should be one of {{'valid', 'same'}}")
            return (0, 0, 0) if value == "valid" else "same"
        return _triple(value, "padding")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, value: Any) -> Any:
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        if isinstance(value, str) and value.lower() in _DTYPE_ALIASES:
            return _DTYPE_ALIASES[value.lower()]
        raise ValueError(f"dtype must be one of float32, float16, bfloat16, got {value}")

    @field_validator("layout", mode="before")
    @classmethod
    def _layout_name(cls, value: Any) -> Any:
        if value is torch.contiguous_format:
            return "ncdhw"
        if value is torch.channels_last_3d:
            return "ndhwc"
        if isinstance(value, str) and value.lower().removeprefix("torch.") in _LAYOUT_ALIASES:
            return _LAYOUT_ALIASES[value.lower().removeprefix("torch.")]
        raise ValueError(f"layout must be 'ncdhw' (torch.contiguous_format) or 'ndhwc' "
                         f"(torch.channels_last_3d), got {value!r}")

    # ---- checks on the whole configuration ------------------------------------------

    @model_validator(mode="after")
    def _check(self) -> "ConvSpec":
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.groups < 1:
            raise ValueError(f"groups must be a positive integer, got {self.groups}")
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels must be divisible by groups "
                             f"(in_channels={self.in_channels}, groups={self.groups})")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels must be divisible by groups "
                             f"(out_channels={self.out_channels}, groups={self.groups})")
        if min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be at least 1 in every dimension, got {self.kernel_size}")
        if min(self.stride) < 1:
            raise ValueError(f"non-positive stride is not supported, got stride={self.stride}")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation should be greater than zero, got dilation={self.dilation}")
        if self.padding == "same":
            if max(self.stride) > 1:
                raise ValueError("padding='same' is not supported for strided convolutions")
        elif min(self.padding) < 0:
            raise ValueError(f"negative padding is not supported, got padding={self.padding}")
        if self.precision == "tf32" and self.dtype != "float32":
            raise ValueError(f"precision='tf32' applies to float32 only, got dtype={self.dtype}; "
                             "float16 and bfloat16 always accumulate in float32")
        return self

    # ---- derived geometry -----------------------------------------------------------

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def kernel_volume(self) -> int:
        kd, kh, kw = self.kernel_size
        return kd * kh * kw

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_per_group, *self.kernel_size)

    @property
    def pad_before(self) -> Triple:
        """Zeros added before each spatial dimension; 'same' puts the odd one after, as torch does."""
        if self.padding == "same":
            return tuple(dil * (k - 1) // 2 for k, dil in zip(self.kernel_size, self.dilation))
        return self.padding

    @property
    def pad_after(self) -> Triple:
        if self.padding == "same":
            return tuple(dil * (k - 1) - before for k, dil, before
                         in zip(self.kernel_size, self.dilation, self.pad_before))
        return self.padding

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of input and output: contiguous_format or channels_last_3d."""
        return MEMORY_FORMATS[self.layout]

    def output_size(self, d: int, h: int, w: int) -> Triple:
        """Output (od, oh, ow) for an input of (d, h, w), as torch computes it."""
        return tuple(
            (size + before + after - dil * (k - 1) - 1) // s + 1
            for size, before, after, dil, k, s in zip(
                (d, h, w), self.pad_before, self.pad_after, self.dilation, self.kernel_size, self.stride)
        )

    def functional_args(self) -> dict[str, Any]:
        """stride, padding, dilation and groups as torch.nn.functional.conv3d takes them."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    # ---- identity -------------------------------------------------------------------

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def tag(self) -> str:
        """Readable identity, e.g. k3x5x7_s1_p0_d1_g1_ci3_co64_f32 (tf32 for precision='tf32'),
        ending in _cl for channels_last_3d ('ndhwc')."""
        def t(v):
            return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))
        pad = "same" if self.padding == "same" else t(self.padding)
        dt = "tf32" if self.precision == "tf32" else DTYPE_TAGS[self.dtype]
        return (f"k{'x'.join(map(str, self.kernel_size))}_s{t(self.stride)}_p{pad}_d{t(self.dilation)}"
                f"_g{self.groups}_ci{self.in_channels}_co{self.out_channels}_{dt}"
                + ("_cl" if self.layout == "ndhwc" else ""))

    # ---- other ways in --------------------------------------------------------------

    @classmethod
    def from_module(cls, module: torch.nn.Conv3d, precision: str = "ieee") -> "ConvSpec":
        """The spec of the convolution `module` runs. For padding modes other than 'zeros' the
        module pads the input itself, so the convolution it runs has no padding."""
        padding = module.padding if module.padding_mode == "zeros" else 0
        return cls(in_channels=module.in_channels, out_channels=module.out_channels,
                   kernel_size=module.kernel_size, stride=module.stride, padding=padding,
                   dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                   dtype=module.weight.dtype, precision=precision)

    @classmethod
    def from_text(cls, text: str | list[str]) -> "ConvSpec":
        """Parse the short form: '3x5x7 --cin 3 --cout 64 [--stride 2] [--padding same] ...'."""
        tokens = shlex.split(text) if isinstance(text, str) else list(text)
        try:
            args = _TEXT_PARSER.parse_args(tokens)
        except _TextFormError as err:
            raise ValueError(f"bad spec {' '.join(tokens)!r}: {err}. Form: {_TEXT_USAGE}") from None
        return cls(in_channels=args.cin, out_channels=args.cout, kernel_size=args.kernel,
                   stride=args.stride, padding=args.padding, dilation=args.dilation,
                   groups=args.groups, bias=args.bias, dtype=args.dtype, precision=args.precision,
                   layout=args.layout)

    def to_text(self) -> str:
        def t(v):
            return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))
        pad = "same" if self.padding == "same" else t(self.padding)
        text = (f"{'x'.join(map(str, self.kernel_size))} --cin {self.in_channels} --cout {self.out_channels}"
                f" --stride {t(self.stride)} --padding {pad} --dilation {t(self.dilation)}"
                f" --groups {self.groups} --dtype {self.dtype}")
        if not self.bias:
            text += " --no-bias"
        if self.precision != "ieee":
            text += f" --precision {self.precision}"
        if self.layout != "ncdhw":
            text += f" --layout {self.layout}"
        return text


class _TextFormError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of exiting: callers decide how to report
        raise _TextFormError(message)


_TEXT_USAGE = ("KDxKHxKW --cin N --cout N [--stride S] [--padding P|same|valid] [--dilation D] "
               "[--groups G] [--no-bias] [--dtype float32|float16|bfloat16] [--precision ieee|tf32] "
               "[--layout ncdhw|ndhwc]")
_TEXT_PARSER = _Parser(prog="spec", add_help=False, allow_abbrev=False)
_TEXT_PARSER.add_argument("kernel")
_TEXT_PARSER.add_argument("--cin", type=int, required=True)
_TEXT_PARSER.add_argument("--cout", type=int, required=True)
_TEXT_PARSER.add_argument("--stride", default="1")
_TEXT_PARSER.add_argument("--padding", default="0")
_TEXT_PARSER.add_argument("--dilation", default="1")
_TEXT_PARSER.add_argument("--groups", type=int, default=1)
_TEXT_PARSER.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True)
_TEXT_PARSER.add_argument("--dtype", default="float32")
_TEXT_PARSER.add_argument("--precision", default="ieee")
_TEXT_PARSER.add_argument("--layout", default="ncdhw")
