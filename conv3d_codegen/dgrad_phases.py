"""The gradient of the input where it is not one stride-1 convolution: split by output phase.

Along one dimension with stride s, padding p (before) and dilation dil, input position
i = s*j + r (phase r in 0..s-1) receives grad_out[o] * w[k] only from the taps k with
(r + p - k*dil) % s == 0, and reads o = j + (r + p - k*dil) / s. So each phase (rd, rh, rw)
of the gradient, grad_x[:, :, rd::sd, rh::sh, rw::sw], is a stride-1 convolution of grad_out
with that phase's taps of the flipped weight (every s-th tap at dilation 1): an ordinary
forward ConvSpec, which goes through the dispatcher like any forward call (generated kernels,
autotuning, torch where torch is faster, the modes, strict mode). Every tap serves exactly
one phase and every element of grad_x is written by exactly one phase, so nothing is wasted
and the result is deterministic. A phase no tap reaches is zero.

A phase's padding can be uneven, or below zero (padding past the kernel's reach): the phase
convolution takes the larger of the two (at least 0), grad_out is cropped where a side's
padding is below zero, and the outputs the larger padding adds are trimmed off when the phase
is copied into its slice of grad_x. The kernels write dense outputs, so each phase is
computed into a temporary and copied into its strided slice (one extra write and read of
grad_x); only a single phase without trimming (stride 1) is written in place.

Stride 1 with uneven padding ('same' with an even kernel) or padding past the kernel's reach
is the one-phase case; stride 1 otherwise is render_grad.dgrad_spec's single convolution.

With autotuning on, the first call for a (spec, input shape, GPU) decides the phase
convolutions, then times the whole phase split against torch's convolution_backward and
keeps the winner as a record (op 'dgrad-phases'): torch unless the split beats it by 2%;
later calls and processes read it (also with autotuning off, as the forward does). Without
a record and without autotuning, the phase split runs. The modes apply to each phase
convolution as to any forward call; in mode 'jit' the phases' kernels (or their candidates)
are built at once, in parallel. Mode 'off' and CPU tensors run torch's dgrad (a fallback:
logged once, an error in strict mode); torch chosen by timing is not a fallback. While
phase kernels build in the background (mode 'async'), torch computes the gradient. During
CUDA graph capture nothing is built or timed: a plan made before stands, a new one is
decided again after capture.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .autotune import TIMING, TORCH, Tuner, keep, settle, timings_text
from .backward import _fallback, flipped_weight, torch_grads
from .build import Target, kernel_key
from .dispatch import Dispatcher, PlanMemos, capturing, cudnn_precision, source_for
from .kernel import launch_args
from .measure import median_ms, relative_error, tolerance
from .render import Source
from .spec import ConvSpec, Triple

log = logging.getLogger("conv3d_codegen")

OP = "dgrad-phases"


# ---- the decomposition ------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseAxis:
    """One phase along one dimension."""

    offset: int               # r: the phase holds input positions r, r + s, r + 2s, ...
    size: int                 # how many: ceil((size - r) / s)
    taps: tuple[int, ...]     # the flipped weight's taps that reach it, ascending, equally spaced
    dilation: int             # of the phase convolution: the distance in grad_out between its taps
    padding: int              # of the phase convolution, on both sides
    crop: tuple[int, int]     # grad_out elements left out before and after (a padding below 0)
    trim: tuple[int, int]     # computed outputs left out before and after (the uneven padding)
    reads: bool               # whether any tap reads grad_out here (else the phase is zero)

    @property
    def taps_slice(self) -> slice:
        step = self.taps[1] - self.taps[0] if len(self.taps) > 1 else 1
        return slice(self.taps[0], self.taps[-1] + 1, step)


def phase_axes(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int) -> list[PhaseAxis]:
    """The phases along one dimension of `size` inputs and `out_size` outputs (grad_out's
    size), padded by `pad` before; phases with no input position (size < stride) are left out."""
    axes = []
    g = math.gcd(stride, dilation)
    for r in range(min(stride, size)):
        count = -(-(size - r) // stride)
        original = [k for k in range(kernel) if (r + pad - k * dilation) % stride == 0]
        if not original:
            axes.append(PhaseAxis(r, count, (), 1, 0, (0, 0), (0, 0), reads=False))
            continue
        taps = tuple(kernel - 1 - k for k in reversed(original))   # the flipped weight's, ascending
        m, dil = len(taps), (dilation // g if len(taps) > 1 else 1)
        q0 = (r + pad - original[0] * dilation) // stride   # the first tap reads grad_out[j + q0]
        before = (m - 1) * dil - q0                         # padding the phase convolution needs
        after = count - out_size + q0                       # before and after: uneven, maybe < 0
        crop = (max(0, -before), max(0, -after))
        before, after = before + crop[0], after + crop[1]
        padding = max(before, after)
        axes.append(PhaseAxis(r, count, taps, dil, padding, crop, (padding - before, padding - after),
                              reads=out_size - crop[0] - crop[1] > 0))
    return axes


@dataclass(frozen=True)
class Phase:
    """The input positions offset + stride * j, and the convolution that computes their gradient."""

    offset: Triple                             # (rd, rh, rw)
    stride: Triple                             # of the forward convolution
    spec: ConvSpec | None                      # the stride-1 phase convolution; None: no tap reaches, zero
    axes: tuple[PhaseAxis, PhaseAxis, PhaseAxis]

    @property
    def taps(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The flipped weight's taps along d, h and w that reach this phase."""
        return tuple(a.taps for a in self.axes)

    @property
    def size(self) -> Triple:
        return tuple(a.size for a in self.axes)

    @property
    def slices(self) -> tuple[slice, ...]:
        """Where this phase lies in grad_x."""
        return (slice(None), slice(None), *(slice(r, None, s) for r, s in zip(self.offset, self.stride)))

    @property
    def crop(self) -> tuple[tuple[int, int], ...]:
        return tuple(a.crop for a in self.axes)

    @property
    def trim(self) -> tuple[tuple[int, int], ...]:
        return tuple(a.trim for a in self.axes)

    def grad_out(self, grad_out: torch.Tensor) -> torch.Tensor:
        """The part of grad_out the phase convolution reads (a view unless cropped)."""
        if not any(b or a for b, a in self.crop):
            return grad_out
        return grad_out[(slice(None), slice(None), *(slice(b, size - a) for (b, a), size
                                                     in zip(self.crop, grad_out.shape[2:])))]

    def grad_out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of grad_out(a tensor of `shape`)."""
        return (*shape[:2], *(size - b - a for (b, a), size in zip(self.crop, shape[2:])))

    def weight(self, flipped: torch.Tensor) -> torch.Tensor:
        """The phase convolution's weight: its taps of the flipped weight, contiguous."""
        return flipped[(slice(None), slice(None), *(a.taps_slice for a in self.axes))].contiguous()

    def trimmed(self, out: torch.Tensor) -> torch.Tensor:
        """The phase convolution's output less the trimmed outputs: the phase's slice of grad_x."""
        if not any(b or a for b, a in self.trim):
            return out
        return out[(slice(None), slice(None), *(slice(b, b + a.size) for (b, _), a in zip(self.trim, self.axes)))]


def phases(spec: ConvSpec, input_size: Triple) -> list[Phase]:
    """Every phase of the gradient of `spec`'s input of spatial size `input_size`: together they
    cover each input position once and use each tap of the weight once."""
    out_size = spec.output_size(*input_size)
    per_axis = [phase_axes(*dims) for dims in zip(input_size, out_size, spec.kernel_size, spec.stride,
                                                   spec.pad_before, spec.dilation)]
    found = []
    for axes in itertools.product(*per_axis):
        spec_ = None
        if all(a.taps and a.reads for a in axes):
            spec_ = ConvSpec(in_channels=spec.out_channels, out_channels=spec.in_channels,
                             kernel_size=tuple(len(a.taps) for a in axes), padding=tuple(a.padding for a in axes),
                             dilation=tuple(a.dilation for a in axes), groups=spec.groups, bias=False,
                             dtype=spec.dtype, precision=spec.precision)
        found.append(Phase(tuple(a.offset for a in axes), spec.stride, spec_, axes))
    return found


def phase_sources(spec: ConvSpec, input_shape: tuple[int, ...]) -> list[Source]:
    """The kernels the phase convolutions of `spec`'s dgrad load without autotuning, for an
    input of `input_shape`: to build them up front, with others, in parallel."""
    gy_shape = (input_shape[0], spec.out_channels, *spec.output_size(*input_shape[2:]))
    return [source_for(p.spec, p.grad_out_shape(gy_shape))[0] for p in phases(spec, input_shape[2:])
            if p.spec is not None]


Convolve = Callable[[Phase, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def assemble(found: list[Phase], grad_out: torch.Tensor, flipped: torch.Tensor, input_shape: tuple[int, ...],
             convolve: Convolve) -> torch.Tensor:
    """grad_x from its phases: convolve(phase, its grad_out, its weight, out) runs one phase
    convolution and returns its output; `out` is the phase's slice of grad_x where the
    convolution may write it in place (dense, nothing to trim), else None."""
    grad_x = grad_out.new_empty(input_shape)
    cropped: dict[tuple, torch.Tensor] = {}  # phases that crop grad_out alike share one copy
    for phase in found:
        if phase.spec is None:  # no tap reaches it
            grad_x[phase.slices].zero_()
            continue
        if phase.crop not in cropped:
            cropped[phase.crop] = phase.grad_out(grad_out).contiguous()
        target = grad_x[phase.slices]
        in_place = target.is_contiguous() and not any(b or a for b, a in phase.trim)
        out = convolve(phase, cropped[phase.crop], phase.weight(flipped), target if in_place else None)
        if out is not target:
            target.copy_(phase.trimmed(out))
    return grad_x


# ---- through the dispatcher ----------------------------------------------------------------

def run_phases(dispatcher: Dispatcher, spec: ConvSpec, found: list[Phase], grad_out: torch.Tensor,
               weight: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """grad_x with each phase convolution as the dispatcher plans it (generated or torch)."""
    def convolve(phase: Phase, gy: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        plan = dispatcher.plan_for(phase.spec, gy, w, None)
        if plan.kernel is None:
            with cudnn_precision(phase.spec.precision, gy.dtype):
                return F.conv3d(gy, w, None, **phase.spec.functional_args())
        if out is None:
            out = gy.new_empty((gy.shape[0], phase.spec.out_channels, *phase.spec.output_size(*gy.shape[2:])))
        return plan.kernel(gy, w, None, out, launch_args(phase.spec, gy.shape))

    return assemble(found, grad_out.contiguous(), flipped_weight(spec, weight), input_shape, convolve)


LABEL = "phase split"  # the phase split's name among the timings of its contest with torch


@dataclass(frozen=True)
class PhaseSplit:
    """The phase split as an autotuning winner (for autotune.keep's record)."""

    template: ClassVar[str] = OP
    phases: int  # phase convolutions run

    def __str__(self) -> str:
        return LABEL


@dataclass(frozen=True)
class PhasesPlan:
    phases: tuple[Phase, ...]
    torch: bool = False         # torch's convolution_backward computes the gradient instead
    reason: str | None = None   # why torch
    tuned: bool = False         # chosen by timing: torch is then not a fallback
    pending: bool = False       # phase kernels are building in the background: decided again
    provisional: bool = False   # made during CUDA graph capture without timing: decided again after it

    @property
    def stale(self) -> bool:
        """Decided again on every call while the phase kernels build (the phase convolutions'
        plans hold the builds and say when they are done), and after capture if provisional."""
        return self.pending or self.provisional


_plans: PlanMemos[PhasesPlan] = PlanMemos()  # per dispatcher, by device, dtype, input shape and spec


def phase_input_grad(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
                     input_shape: tuple[int, ...]) -> torch.Tensor:
    """Gradient of the input (shape `input_shape`, contiguous): the phase split, or torch's
    where autotuning found it faster (or nothing generated can run: a fallback)."""
    plan = phases_plan(dispatcher, spec, grad_out, weight, input_shape)
    if plan.torch:
        if not plan.tuned and not plan.pending:
            _fallback(dispatcher, ("dgrad", spec), f"dgrad of {spec.tag}: {plan.reason}")
        return torch_dgrad(spec, grad_out, weight, input_shape)
    return run_phases(dispatcher, spec, list(plan.phases), grad_out, weight, input_shape)


def torch_dgrad(spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
                input_shape: tuple[int, ...]) -> torch.Tensor:
    # convolution_backward reads only the input's shape here: one element expanded to it (as
    # torch.nn.grad.conv3d_input does), not an input-sized allocation.
    x = grad_out.new_empty(1).expand(input_shape)
    return torch_grads(spec, grad_out, x, weight, (True, False, False))[0].contiguous()


def phases_plan(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
                input_shape: tuple[int, ...]) -> PhasesPlan:
    in_capture = capturing(grad_out)

    def logged(before: PhasesPlan | None, plan: PhasesPlan) -> None:
        # (a fallback is logged once where it runs; a wait for builds once, not on every call)
        if plan.torch and (plan.tuned or (plan.pending and not (before and before.pending))):
            log.info("conv3d dgrad %s -> torch: %s", spec.tag, plan.reason)

    return _plans.of(dispatcher).plan(
        (grad_out.device, grad_out.dtype, tuple(input_shape), spec),
        lambda before: _decide(dispatcher, spec, grad_out, weight, tuple(input_shape), in_capture), in_capture, logged)


def _decide(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
            input_shape: tuple[int, ...], in_capture: bool) -> PhasesPlan:
    found = tuple(phases(spec, input_shape[2:]))
    if not grad_out.is_cuda:
        return PhasesPlan(found, torch=True, reason=f"input is on {grad_out.device.type}")
    if dispatcher.mode == "off":
        return PhasesPlan(found, torch=True, reason="mode 'off'")
    target = Target.for_device(grad_out.device)
    record = dispatcher.cache.read_record(*_record_id(spec, input_shape, grad_out.device, target))
    if record is not None and record["winner"] == TORCH:
        return PhasesPlan(found, torch=True, reason=f"autotuned: the phase split did not beat torch by 2% "
                                                     f"({timings_text(record['timings_ms'])})", tuned=True)
    tune = record is None and dispatcher.autotune and dispatcher.mode != "prebuilt"
    if in_capture:  # nothing is built or timed while capturing
        return PhasesPlan(found, tuned=record is not None, provisional=tune)
    _prebuild(dispatcher, found, grad_out, target)
    if not tune:
        return PhasesPlan(found, tuned=record is not None)
    # The phase convolutions first: this builds (and autotunes) them, or starts their builds.
    grad_out, flipped = grad_out.contiguous(), flipped_weight(spec, weight)
    plans = [dispatcher.plan_for(p.spec, p.grad_out(grad_out).contiguous(), p.weight(flipped), None)
             for p in found if p.spec is not None]
    if any(p.pending is not None for p in plans):
        return PhasesPlan(found, torch=True, reason="the phase convolutions' kernels are building in the background",
                          pending=True)
    return _tune(dispatcher, spec, found, grad_out, weight, input_shape, target)


def _prebuild(dispatcher: Dispatcher, found: tuple[Phase, ...], grad_out: torch.Tensor, target: Target) -> None:
    """In mode 'jit', build what the phase convolutions will need (their kernels, or their
    autotuning candidates) all at once: the dispatcher would build them one phase after the
    other. Only a head start: whatever fails here fails again, with its reason, in the plan."""
    if dispatcher.mode != "jit":
        return
    sources = {}
    for phase in found:
        if phase.spec is None:
            continue
        try:  # what Dispatcher._kernel_plan will load: the tuned winner, the candidates, or the default
            found_sources = dispatcher.kernel_sources(phase.spec, phase.grad_out_shape(tuple(grad_out.shape)),
                                                      target, grad_out.device).sources
        except ValueError as err:  # a candidate the template refuses: the tuner drops it with its reason
            log.info("conv3d dgrad phases: not prebuilt (%s)", err)
            continue
        for source in found_sources:
            sources.setdefault(kernel_key(source, target), source)
    missing = [s for s in sources.values() if dispatcher.loader.find(s, target) is None]
    if len(missing) > 1:
        dispatcher.loader.load_many(missing, target)


def _record_id(spec: ConvSpec, input_shape: tuple[int, ...], device: torch.device, target: Target):
    return Tuner.record_id(spec, input_shape, target, torch.cuda.get_device_name(device), op=OP)


def _tune(dispatcher: Dispatcher, spec: ConvSpec, found: tuple[Phase, ...], grad_out: torch.Tensor,
          weight: torch.Tensor, input_shape: tuple[int, ...], target: Target) -> PhasesPlan:
    """Verify the phase split on the first sample against float64 torch, time it and torch's
    dgrad on the real tensors, and keep the winner (torch unless the split beats it by 2%)."""
    started = time.perf_counter()
    timings, dropped = {}, {}
    with torch.no_grad():
        one = (1, *input_shape[1:])
        want = torch_grads(spec, grad_out[:1].double(), grad_out.new_empty(one, dtype=torch.float64),
                           weight.double(), (True, False, False))[0]
        got = run_phases(dispatcher, spec, list(found), grad_out, weight, input_shape)
        err = relative_error(got[:1], want)
        if err <= tolerance(spec):
            timings[LABEL] = median_ms(lambda: run_phases(dispatcher, spec, list(found), grad_out, weight,
                                                          input_shape), **TIMING)
        else:
            dropped[LABEL] = f"verify: relative error {err:.2e} over {tolerance(spec):.0e}"
        timings[TORCH] = median_ms(lambda: torch_dgrad(spec, grad_out, weight, input_shape), **TIMING)
    best = settle(spec, timings, dropped, op=OP)
    winner = PhaseSplit(sum(p.spec is not None for p in found)) if best == LABEL else None
    shaped = grad_out.new_empty(()).expand(input_shape)  # keep() reads the shape and the device
    keep(dispatcher.cache, _record_id(spec, input_shape, grad_out.device, target), spec, shaped, winner, timings,
         dropped, started, op=OP)
    if winner is None:
        return PhasesPlan(found, torch=True, reason=f"autotuned: the phase split did not beat torch by 2% "
                                                    f"({timings_text(timings)})", tuned=True)
    return PhasesPlan(found, tuned=True)
