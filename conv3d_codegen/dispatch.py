"""Dispatch: for each call, the generated kernel, the generic kernel or torch, and why.

Decisions are memoized per (device, dtypes, shapes, parameters) and each is logged once.
Where an autotuning record exists for the spec and input shape, its winner is used (tile
sizes, or torch); with autotuning on (CONV3D_CODEGEN_AUTOTUNE=1) a missing record is made
on the first call. In strict mode (the `strict()` context, or CONV3D_CODEGEN_STRICT=1) a
fallback from the generated kernel raises FallbackError instead, for CI and benchmarks;
torch chosen by autotuning is not a fallback.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from .autotune import Choice, Tuner
from .build import KernelBuildError, Target
from .cache import CacheUnusable, KernelCache
from .kernel import Kernel, KernelLoader
from .render import WIDE_INDEX_ELEMENTS, Source, Tiles, default_tiles, render_direct, render_generic, supports
from .spec import TORCH_DTYPES, ConvSpec

log = logging.getLogger("conv3d_codegen")

STRICT_ENV = "CONV3D_CODEGEN_STRICT"
AUTOTUNE_ENV = "CONV3D_CODEGEN_AUTOTUNE"
_strict: contextvars.ContextVar[bool | None] = contextvars.ContextVar("conv3d_codegen_strict", default=None)

Route = Literal["generated", "generic", "torch"]


class FallbackError(RuntimeError):
    """In strict mode, raised where a call would not run its generated kernel."""


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Within this block, a fallback from the generated kernel is an error."""
    token = _strict.set(enabled)
    try:
        yield
    finally:
        _strict.reset(token)


def strict_enabled() -> bool:
    value = _strict.get()
    return value if value is not None else _env_flag(STRICT_ENV)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


@contextlib.contextmanager
def cudnn_precision(precision: str, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """cuDNN in the given precision: it uses TF32 for float32 by default, 'ieee' forbids it.
    Touches the one flag, and only for float32 where it differs (this runs on every call)."""
    cudnn, wanted = torch.backends.cudnn, precision == "tf32"
    if dtype != torch.float32 or cudnn.allow_tf32 == wanted:
        yield
        return
    cudnn.allow_tf32 = wanted
    try:
        yield
    finally:
        cudnn.allow_tf32 = not wanted


@dataclass(frozen=True)
class Plan:
    route: Route
    reason: str | None = None       # why not the generated kernel
    spec: ConvSpec | None = None
    kernel: Kernel | None = None
    tuned: bool = False             # chosen by timing against the other candidates

    @property
    def fallback(self) -> bool:
        return self.route != "generated" and not self.tuned


def _torch_only(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why a call must go to torch before any spec is built (torch also raises the errors)."""
    if not x.is_cuda:
        return f"input is on {x.device.type}; generated kernels run on CUDA devices"
    if x.dim() != 5 or weight.dim() != 5:
        return f"input of {x.dim()} and weight of {weight.dim()} dimensions; conv3d takes 5"
    tensors = [x, weight] + ([bias] if bias is not None else [])
    if len({t.device for t in tensors}) > 1:
        return "input, weight and bias are on different devices"
    if len({t.dtype for t in tensors}) > 1:
        return "input, weight and bias have different dtypes"
    if x.dtype not in TORCH_DTYPES.values():
        return f"{x.dtype} has no generated kernel (float32, float16 and bfloat16 do)"
    if x.numel() == 0:
        return "the input is empty"
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d input: the NCDHW kernels would return another memory format than torch"
    return None


def source_for(spec: ConvSpec, input_shape: tuple[int, ...] | None = None,
               tiles: Tiles | None = None) -> tuple[Source, str | None]:
    """The source that serves `spec` (on inputs of `input_shape`, if given), and why it is not
    the specialized one (or None)."""
    reason, wide = supports(spec), False
    if input_shape is not None:
        n, ci, d, h, w = input_shape
        od, oh, ow = spec.output_size(d, h, w)
        wide = max(n * ci * d * h * w, n * spec.out_channels * od * oh * ow) >= WIDE_INDEX_ELEMENTS
        wt = (tiles or default_tiles(spec)).wt
        if reason is None and ow < wt:
            reason = f"output width {ow} is below the {wt} outputs a thread computes"
    return (render_direct(spec, tiles, wide), None) if reason is None else (render_generic(spec.dtype), reason)


class Dispatcher:
    """Chooses and loads the kernel for each call. One per cache; see default_dispatcher()."""

    def __init__(self, cache: KernelCache | None = None, autotune: bool | None = None):
        self.loader = KernelLoader(cache or KernelCache())
        self.tuner = Tuner(self.loader)
        self.autotune = _env_flag(AUTOTUNE_ENV) if autotune is None else autotune
        self._plans: dict[tuple, Plan] = {}

    @property
    def cache(self) -> KernelCache:
        return self.loader.cache

    def plan(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             stride, padding, dilation, groups, precision: str = "ieee") -> Plan:
        key = (x.device, x.dtype, tuple(x.shape), x.is_contiguous(), weight.device, weight.dtype,
               tuple(weight.shape), None if bias is None else (bias.device, bias.dtype, tuple(bias.shape)),
               _hashable(stride), _hashable(padding), _hashable(dilation), groups, precision)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans.setdefault(key, self._decide(x, weight, bias, stride, padding,
                                                            dilation, groups, precision))
            if plan.route != "generated":
                level = logging.WARNING if plan.fallback and x.is_cuda else logging.INFO
                log.log(level, "conv3d %s -> %s: %s", plan.spec.tag if plan.spec else tuple(x.shape),
                        plan.route, plan.reason)
        if plan.fallback and strict_enabled():
            raise FallbackError(f"strict mode: conv3d would run on {plan.route}: {plan.reason}")
        return plan

    def _decide(self, x, weight, bias, stride, padding, dilation, groups, precision) -> Plan:
        if (reason := _torch_only(x, weight, bias)) is not None:
            return Plan("torch", reason)
        try:
            spec = ConvSpec(in_channels=weight.shape[1] * groups, out_channels=weight.shape[0],
                            kernel_size=tuple(weight.shape[2:]), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, bias=bias is not None, dtype=x.dtype,
                            precision=precision)
        except ValidationError as err:
            return Plan("torch", f"not a valid convolution ({err.errors()[0]['msg']})")
        if x.shape[1] != spec.in_channels or (bias is not None and tuple(bias.shape) != (spec.out_channels,)):
            return Plan("torch", "input or bias shape does not match the weight", spec)
        if min(spec.output_size(*x.shape[2:])) < 1:
            return Plan("torch", "the kernel is larger than the padded input", spec)
        target, tuned = Target.for_device(x.device), None
        if supports(spec) is None:
            tuned = self._tuned(spec, x, weight, bias, target, precision)
            if tuned is not None and tuned.winner is None:
                return Plan("torch", f"autotuned: torch was fastest ({tuned.timings_ms})", spec, tuned=True)
        source, reason = source_for(spec, tuple(x.shape), tuned.winner if tuned else None)
        try:
            kernel = self.loader.load(source, target)
        except KernelBuildError as err:
            log.warning("%s", err)
            return Plan("torch", f"kernel build failed; source and log kept at {err.source_path}", spec)
        except CacheUnusable as err:
            return Plan("torch", f"no usable kernel cache: {err}", spec)
        return Plan("generic" if reason else "generated", reason, spec, kernel, tuned=tuned is not None)

    def _tuned(self, spec, x, weight, bias, target, precision) -> Choice | None:
        """The autotuning record for this call's spec and shape; made now if autotuning is on."""
        device_name = torch.cuda.get_device_name(x.device)
        choice = self.tuner.lookup(spec, tuple(x.shape), target, device_name)
        if choice is None and self.autotune:
            def torch_call():
                with cudnn_precision(precision, x.dtype):
                    return F.conv3d(x, weight, bias, **spec.functional_args())
            wide = source_for(spec, tuple(x.shape))[0].params.get("offsets") == "64-bit"
            choice = self.tuner.tune(spec, x, weight, bias, target, torch_call, wide=wide)
        return choice

    def prebuild(self, specs: Iterable[ConvSpec], device: torch.device | int | None = None,
                 workers: int | None = None) -> dict[ConvSpec, Kernel | Exception]:
        """Build the kernels of many specs in parallel (each build is an nvcc process)."""
        specs = list(dict.fromkeys(specs))
        kernels = self.loader.load_many([source_for(spec)[0] for spec in specs], Target.for_device(device), workers)
        return dict(zip(specs, kernels))


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The process-wide dispatcher over the default cache directory, made on first use."""
    global _default
    if _default is None:
        _default = Dispatcher()
    return _default
