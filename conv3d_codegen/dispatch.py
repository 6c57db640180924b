"""Dispatch: for each call, the generated kernel, the generic kernel or torch, and why.

Decisions are memoized per (device, dtypes, shapes, parameters) and each is logged once.
Where an autotuning record exists for the spec and input shape, its winner is used (tile
sizes, or torch); with autotuning on, a missing record is made (so the pick is never
slower than torch). How a missing kernel is obtained depends on the mode:

  jit       build (and tune) on first use, and wait
  async     build in the background and serve the call with torch until it is ready; the
            short timing contest of autotuning then runs on a later call
  prebuilt  use only what the cache holds, never compile; otherwise torch, with the reason
  off       torch

In strict mode (the `strict()` context, or CONV3D_CODEGEN_STRICT=1) a fallback from the
generated kernel raises FallbackError instead, for CI and benchmarks; torch chosen by
autotuning is not a fallback.

While the current CUDA stream is capturing a graph, nothing is built, tuned, synchronized
or started in the background: a plan made before is used as it is, and a new one takes a
kernel only if the cache already holds it, else torch (and is decided again after capture).
PlanMemo keeps plans by call key with that rule; the gradients' plans (backward.py,
dgrad_phases.py) are kept the same way, one PlanMemo per dispatcher (PlanMemos).

conv3d(), Conv3d and their backward use the process's current dispatcher:
default_dispatcher(), replaced by set_default_dispatcher() or, for a block, `using()`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from .autotune import AnyTiles, Choice, Tuner, buildable_sources, render_tiles, timings_text
from .build import KernelBuildError, Target
from .cache import CacheUnusable, KernelCache
from .kernel import Kernel, KernelLoader
from .render import Source, Tiles, default_tiles, render_direct, render_generic, supports, wide_offsets
from .spec import TORCH_DTYPES, ConvSpec, layout_of

log = logging.getLogger("conv3d_codegen")

STRICT_ENV = "CONV3D_CODEGEN_STRICT"
AUTOTUNE_ENV = "CONV3D_CODEGEN_AUTOTUNE"
MODE_ENV = "CONV3D_CODEGEN_MODE"
MODES = ("jit", "async", "prebuilt", "off")
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


# ---- the memo of plans ------------------------------------------------------------------

class Memoized(Protocol):
    """What PlanMemo asks of a plan."""

    @property
    def stale(self) -> bool:
        """Whether the plan is to be decided again on the next call outside capture."""


P = TypeVar("P", bound=Memoized)


class Revisable:
    """`stale` for a plan that holds `pending` (the background build it waits for, or None)
    and `provisional` (made during capture, which held a build or autotuning back)."""

    pending: Future | None
    provisional: bool

    @property
    def stale(self) -> bool:
        return self.provisional or (self.pending is not None and self.pending.done())


class PlanMemo(Generic[P]):
    """One owner's plans by call key: each decided once and reused until it is stale
    (`plan.stale`), then decided again, but never during CUDA graph capture: there a plan
    made before stands (a key never seen is still decided; that decision builds nothing).

    No lock, as with a dict: two threads may decide one key at once; the last one is kept."""

    def __init__(self) -> None:
        self._plans: dict[Hashable, P] = {}

    def plan(self, key: Hashable, decide: Callable[[P | None], P], in_capture: bool,
             changed: Callable[[P | None, P], None] | None = None) -> P:
        """The plan for `key`: the one kept, or decide(the stale one before, or None), kept and
        passed to changed(before, plan) to be logged, once per decision."""
        plan = self._plans.get(key)
        if plan is None or (plan.stale and not in_capture):
            before, plan = plan, decide(plan)
            self._plans[key] = plan
            if changed is not None:
                changed(before, plan)
        return plan

    def peek(self, key: Hashable) -> P | None:
        """The plan kept for `key`, stale or not, deciding nothing (for the hot path)."""
        return self._plans.get(key)

    def plans(self) -> list[P]:
        return list(self._plans.values())


class PlanMemos(Generic[P]):
    """A PlanMemo per owner (a Dispatcher), dropped with it: for plans that other modules keep
    beside the dispatcher's own (the gradients')."""

    def __init__(self) -> None:
        self._memos: weakref.WeakKeyDictionary[object, PlanMemo[P]] = weakref.WeakKeyDictionary()

    def of(self, owner: object) -> PlanMemo[P]:
        memo = self._memos.get(owner)
        return memo if memo is not None else self._memos.setdefault(owner, PlanMemo())


# ---- plans ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan(Revisable):
    route: Route
    reason: str | None = None       # why not the generated kernel
    spec: ConvSpec | None = None
    kernel: Kernel | None = None
    tuned: bool = False             # chosen by timing against the other candidates
    pending: Future | None = None   # async mode: the background build this plan waits for
    call: str = ""                  # the call it was made for: input shape, dtype, device
    provisional: bool = False       # made during CUDA graph capture, which held back a build or
                                    # autotuning: decided again on the next call outside capture

    @property
    def fallback(self) -> bool:
        return self.route != "generated" and not self.tuned

    def describe(self) -> str:
        what = self.spec.tag if self.spec else "conv3d"
        ran = f"{self.route} kernel {self.kernel.name}" if self.kernel else self.route
        why = self.reason or "the specialized kernel"
        return f"{what} on {self.call}: {ran}{' (autotuned)' if self.tuned else ''}; {why}"


@dataclass(frozen=True)
class KernelSources:
    """What a kernel plan for one spec and input shape loads: see Dispatcher.kernel_sources."""
    sources: list[Source]         # the autotuning candidates if `tune`, else the kernel that serves;
                                  # none where autotuning chose torch
    choice: Choice | None = None  # the kept autotuning record, if any
    tune: bool = False            # no record, autotuning on: the candidates are built, then timed
    untuned: bool = False         # no record, autotuning on, but capturing: the default kernel meanwhile
    reason: str | None = None     # why the kernel that serves is not the specialized one


def _in_background(work: Callable[[], object]) -> Future:
    """Run `work` on a daemon thread: a build left running must not hold up the exit."""
    future: Future = Future()

    def run():
        try:
            future.set_result(work())
        except BaseException as err:  # handed to whoever looks at the future
            future.set_exception(err)

    threading.Thread(target=run, name="conv3d-codegen-build", daemon=True).start()
    return future


def capturing(x: torch.Tensor) -> bool:
    """Whether a call on `x` is being captured into a CUDA graph, where nothing may be built,
    tuned, synchronized or started in the background."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


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
    return None


def source_for(spec: ConvSpec, input_shape: tuple[int, ...] | None = None,
               tiles: AnyTiles | None = None) -> tuple[Source, str | None]:
    """The source that serves `spec` (on inputs of `input_shape`, if given), and why it is not
    the specialized one (or None)."""
    if tiles is not None and not isinstance(tiles, Tiles):  # chosen by autotuning, for this input shape
        return render_tiles(spec, tiles, input_shape is not None and wide_offsets(spec, input_shape),
                            tuple(input_shape[2:]) if input_shape is not None else None), None
    reason, wide = supports(spec), False
    if input_shape is not None:
        wide = wide_offsets(spec, input_shape)
        ow, wt = spec.output_size(*input_shape[2:])[2], (tiles or default_tiles(spec)).wt
        if reason is None and ow < wt:
            reason = f"output width {ow} is below the {wt} outputs a thread computes"
    if reason is None:
        return render_direct(spec, tiles, wide), None
    return render_generic(spec.dtype, spec.layout), reason


class Dispatcher:
    """Chooses and loads the kernel for each call. One per cache; see default_dispatcher().

    Made in code it builds on first use (mode 'jit') and does not autotune; the process-wide
    dispatcher behind conv3d() and Conv3d reads its settings from the environment."""

    def __init__(self, cache: KernelCache | None = None, autotune: bool = False, mode: str = "jit"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.loader = KernelLoader(cache or KernelCache())
        self.tuner = Tuner(self.loader)
        self.autotune, self.mode = autotune, mode
        self._plans: PlanMemo[Plan] = PlanMemo()

    @property
    def cache(self) -> KernelCache:
        return self.loader.cache

    def plans(self) -> list[Plan]:
        """Every decision made so far, for explain()."""
        return self._plans.plans()

    def plan(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             stride, padding, dilation, groups, precision: str = "ieee") -> Plan:
        in_capture = capturing(x)

        def decide(before: Plan | None) -> Plan:
            plan = self._decide(x, weight, bias, stride, padding, dilation, groups, precision, before, in_capture)
            return dataclasses.replace(plan, call=f"input {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} "
                                                  f"{x.device}")

        def logged(before: Plan | None, plan: Plan) -> None:
            if plan.route != "generated":
                level = logging.WARNING if plan.fallback and x.is_cuda and not plan.pending else logging.INFO
                log.log(level, "conv3d %s -> %s: %s", plan.spec.tag if plan.spec else tuple(x.shape),
                        plan.route, plan.reason)

        plan = self._plans.plan(_key(x, weight, bias, stride, padding, dilation, groups, precision), decide,
                                in_capture, logged)
        if plan.fallback and strict_enabled():
            raise FallbackError(f"strict mode: conv3d would run on {plan.route}: {plan.reason}")
        return plan

    def decided(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride, padding, dilation, groups, precision: str = "ieee") -> Plan | None:
        """The plan plan() would return for this call without deciding, building or logging
        anything: None unless one was made before and stands (not provisional, no build
        pending, not a fallback that strict mode must refuse). A lookup, for the hot path."""
        plan = self._plans.peek(_key(x, weight, bias, stride, padding, dilation, groups, precision))
        if plan is None or plan.provisional or plan.pending is not None or (plan.fallback and strict_enabled()):
            return None
        return plan

    def plan_for(self, spec: ConvSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Plan:
        """plan() for a call made with `spec`'s arguments."""
        return self.plan(x, weight, bias, precision=spec.precision, **spec.functional_args())

    def _decide(self, x, weight, bias, stride, padding, dilation, groups, precision, before: Plan | None,
                in_capture: bool = False) -> Plan:
        try:  # the spec of the call where it has one, so that every decision can name it
            spec = ConvSpec(in_channels=weight.shape[1] * groups, out_channels=weight.shape[0],
                            kernel_size=tuple(weight.shape[2:]), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, bias=bias is not None, dtype=x.dtype,
                            precision=precision, layout=layout_of(x))
            invalid = None
        except (ValidationError, IndexError, TypeError) as err:
            spec = None
            invalid = f"not a valid convolution ({err.errors()[0]['msg'] if isinstance(err, ValidationError) else err})"
        if (reason := _torch_only(x, weight, bias)) is not None:
            return Plan("torch", reason, spec)
        if invalid:
            return Plan("torch", invalid)
        if x.shape[1] != spec.in_channels or (bias is not None and tuple(bias.shape) != (spec.out_channels,)):
            return Plan("torch", "input or bias shape does not match the weight", spec)
        if min(spec.output_size(*x.shape[2:])) < 1:
            return Plan("torch", "the kernel is larger than the padded input", spec)
        if self.mode == "off":
            return Plan("torch", "mode 'off'", spec)
        if before is not None and before.pending is not None and before.pending.exception() is not None:
            return Plan("torch", f"the background build failed: {str(before.pending.exception()).splitlines()[0]}",
                        spec)
        try:
            return self._kernel_plan(spec, x, weight, bias, precision, in_capture)
        except KernelBuildError as err:
            log.warning("%s", err)
            return Plan("torch", f"kernel build failed; source and log kept at {err.source_path}", spec)
        except CacheUnusable as err:
            return Plan("torch", f"no usable kernel cache: {err}", spec)

    def kernel_sources(self, spec: ConvSpec, shape: tuple[int, ...], target: Target, device: torch.device,
                       in_capture: bool = False) -> KernelSources:
        """The sources a kernel plan for `spec` on inputs of `shape` loads: without an autotuning
        record and with autotuning on (not in mode 'prebuilt'), every candidate the tuner will
        build, unless capturing holds tuning back; else the kept winner's kernel or, without a
        record, the default one (the generic kernel where the specialized one does not apply);
        none where autotuning chose torch. dgrad_phases builds them for many phases at once."""
        tunable = supports(spec) is None
        choice = self.tuner.lookup(spec, shape, target, torch.cuda.get_device_name(device)) if tunable else None
        untuned = choice is None and tunable and self.autotune and self.mode != "prebuilt"
        if untuned and not in_capture:
            return KernelSources(buildable_sources(spec, tuple(shape), target.arch), tune=True)
        if choice is not None and choice.winner is None:
            return KernelSources([], choice)
        source, reason = source_for(spec, shape, choice.winner if choice else None)
        return KernelSources([source], choice, untuned=untuned, reason=reason)

    def _kernel_plan(self, spec: ConvSpec, x, weight, bias, precision, in_capture: bool = False) -> Plan:
        target, shape = Target.for_device(x.device), tuple(x.shape)
        loads = self.kernel_sources(spec, shape, target, x.device, in_capture)
        choice, sources = loads.choice, loads.sources
        if loads.tune:
            if self.mode == "async" and any(self.loader.find(s, target) is None for s in sources):
                return Plan("torch", f"building {len(sources)} autotuning candidates in the background",
                            spec, pending=_in_background(lambda: self.loader.load_many(sources, target)))
            choice = self._tune(spec, x, weight, bias, target, precision)
        if choice is not None and choice.winner is None:
            return Plan("torch", f"autotuned: no candidate beat torch by 2% ({timings_text(choice.timings_ms)})", spec, tuned=True)
        source, reason = source_for(spec, shape, choice.winner) if loads.tune else (sources[0], loads.reason)
        kernel = self.loader.find(source, target)
        if kernel is None and self.mode == "prebuilt":
            return Plan("torch", f"mode 'prebuilt': {source.name} is not in the cache {self.cache.root}", spec)
        if kernel is None and in_capture:
            return Plan("torch", f"CUDA graph capture: {source.name} is not in the cache {self.cache.root}, "
                                 "and nothing is built while capturing", spec, provisional=True)
        if kernel is None and self.mode == "async":
            return Plan("torch", f"building {source.name} in the background", spec,
                        pending=_in_background(lambda: self.loader.load(source, target)))
        kernel = kernel or self.loader.load(source, target)
        return Plan("generic" if reason else "generated", reason, spec, kernel, tuned=choice is not None,
                    provisional=loads.untuned)

    def _tune(self, spec, x, weight, bias, target, precision) -> Choice:
        def torch_call():
            with cudnn_precision(precision, x.dtype):
                return F.conv3d(x, weight, bias, **spec.functional_args())
        return self.tuner.tune(spec, x, weight, bias, target, torch_call)

    def prebuild(self, specs: Iterable[ConvSpec], device: torch.device | int | None = None,
                 workers: int | None = None, progress: Callable[[Kernel | Exception], None] | None = None,
                 ) -> dict[ConvSpec, Kernel | Exception]:
        """Build the kernels of many specs in parallel (each build is an nvcc process)."""
        specs = list(dict.fromkeys(specs))
        kernels = self.loader.load_many([source_for(spec)[0] for spec in specs], Target.for_device(device),
                                        workers, progress)
        return dict(zip(specs, kernels))


def _key(x, weight, bias, stride, padding, dilation, groups, precision) -> tuple:
    """What a decision depends on: devices, dtypes, shapes, memory format and the arguments."""
    layout = (x.is_contiguous(), x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d))
    return (x.device, x.dtype, tuple(x.shape), layout, weight.device, weight.dtype,
            tuple(weight.shape), None if bias is None else (bias.device, bias.dtype, tuple(bias.shape)),
            _hashable(stride), _hashable(padding), _hashable(dilation), groups, precision)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The process's current dispatcher, behind conv3d(), Conv3d and their backward. Unless
    one was set, made on first use: mode from CONV3D_CODEGEN_MODE (default 'async': a first
    call never waits on a build), autotuning unless CONV3D_CODEGEN_AUTOTUNE=0, over the
    default cache directory."""
    global _default
    if _default is None:
        mode = os.environ.get(MODE_ENV) or "async"
        if mode not in MODES:
            raise ValueError(f"{MODE_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
        _default = Dispatcher(autotune=os.environ.get(AUTOTUNE_ENV, "1") != "0", mode=mode)
    return _default


def set_default_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher | None:
    """Make `dispatcher` the process's current one and return the one before (None if none
    was made yet). None: make one from the environment on next use.

    It is one for the whole process, not per thread: autograd runs backward on threads of
    its own, and a backward pass uses the dispatcher current when it runs."""
    global _default
    previous, _default = _default, dispatcher
    return previous


@contextlib.contextmanager
def using(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    """The current dispatcher within this block (process-wide, see set_default_dispatcher);
    the one before is restored after it."""
    previous = set_default_dispatcher(dispatcher)
    try:
        yield dispatcher
    finally:
        set_default_dispatcher(previous)


def explain(model: torch.nn.Module | None = None, dispatcher: Dispatcher | None = None) -> str:
    """What ran (or will run) for each conv3d call seen so far, and why; only for one
    model's Conv3d layers if a model is given."""
    plans = (dispatcher or default_dispatcher()).plans()
    if model is None:
        return "\n".join(p.describe() for p in plans) or "no conv3d call has been dispatched yet"
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv3d):
            spec = getattr(module, "spec", None) or ConvSpec.from_module(module)
            mine = [p.describe() for p in plans  # a channels_last_3d call's spec differs only in layout
                    if p.spec is not None and p.spec.model_copy(update={"layout": spec.layout}) == spec]
            lines.append(f"{name or type(module).__name__}: " + ("\n  ".join(mine) or "not called yet"))
    return "\n".join(lines) or "the model has no Conv3d layer"


def explain_call(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                 padding=0, dilation=1, groups: int = 1, precision: str = "ieee",
                 dispatcher: Dispatcher | None = None) -> str:
    """What conv3d() runs for these arguments, and why (deciding it now if it is new)."""
    batched = input.unsqueeze(0) if input.dim() == 4 else input
    with strict(False):
        return (dispatcher or default_dispatcher()).plan(batched, weight, bias, stride, padding, dilation,
                                                         groups, precision).describe()
