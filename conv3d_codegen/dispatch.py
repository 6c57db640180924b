"""Dispatch: for each call, the generated kernel, the generic kernel or torch, and why.

Decisions are memoized per (device, dtypes, shapes, parameters) and each is logged once.
In strict mode (the `strict()` context, or CONV3D_CODEGEN_STRICT=1) any route other than
the generated kernel raises FallbackError instead, for CI and benchmarks.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import ValidationError

from .build import KernelBuildError, Target
from .cache import CacheUnusable, KernelCache
from .kernel import Kernel, KernelLoader
from .render import WIDE_INDEX_ELEMENTS, Source, default_tiles, render_direct, render_generic, supports
from .spec import TORCH_DTYPES, ConvSpec

log = logging.getLogger("conv3d_codegen")

STRICT_ENV = "CONV3D_CODEGEN_STRICT"
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
    return value if value is not None else os.environ.get(STRICT_ENV, "0") not in ("", "0")


@dataclass(frozen=True)
class Plan:
    route: Route
    reason: str | None = None       # why not the generated kernel
    spec: ConvSpec | None = None
    kernel: Kernel | None = None


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


def source_for(spec: ConvSpec, input_shape: tuple[int, ...] | None = None) -> tuple[Source, str | None]:
    """The source that serves `spec` (on inputs of `input_shape`, if given), and why it is not
    the specialized one (or None)."""
    reason, wide = supports(spec), False
    if input_shape is not None:
        n, ci, d, h, w = input_shape
        od, oh, ow = spec.output_size(d, h, w)
        wide = max(n * ci * d * h * w, n * spec.out_channels * od * oh * ow) >= WIDE_INDEX_ELEMENTS
        if reason is None and ow < default_tiles(spec).wt:
            reason = f"output width {ow} is below the {default_tiles(spec).wt} outputs a thread computes"
    return (render_direct(spec, wide=wide), None) if reason is None else (render_generic(spec.dtype), reason)


class Dispatcher:
    """Chooses and loads the kernel for each call. One per cache; see default_dispatcher()."""

    def __init__(self, cache: KernelCache | None = None):
        self.loader = KernelLoader(cache or KernelCache())
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
                level = logging.INFO if plan.route == "torch" and not x.is_cuda else logging.WARNING
                log.log(level, "conv3d %s -> %s: %s", plan.spec.tag if plan.spec else tuple(x.shape),
                        plan.route, plan.reason)
        if plan.route != "generated" and strict_enabled():
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
        source, reason = source_for(spec, tuple(x.shape))
        try:
            kernel = self.loader.load(source, Target.for_device(x.device))
        except KernelBuildError as err:
            log.warning("%s", err)
            return Plan("torch", f"kernel build failed; source and log kept at {err.source_path}", spec)
        except CacheUnusable as err:
            return Plan("torch", f"no usable kernel cache: {err}", spec)
        return Plan("generic" if reason else "generated", reason, spec, kernel)

    def prebuild(self, specs: Iterable[ConvSpec], device: torch.device | int | None = None,
                 workers: int | None = None) -> dict[ConvSpec, Kernel | Exception]:
        """Build the kernels of many specs in parallel (each build is an nvcc process)."""
        target = Target.for_device(device)
        sources = {spec: source_for(spec)[0] for spec in dict.fromkeys(specs)}
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            futures = {spec: pool.submit(self.loader.load, src, target) for spec, src in sources.items()}
        return {spec: f.exception() or f.result() for spec, f in futures.items()}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The process-wide dispatcher over the default cache directory, made on first use."""
    global _default
    if _default is None:
        _default = Dispatcher()
    return _default
