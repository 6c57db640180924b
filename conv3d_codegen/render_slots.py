"""Rendering the rotating-slots forward template (wgmma, sm_90a), templates/conv3d_fwd_slots.cu.j2.

For few output channels and many input channels, the shape of dgrad on a 3-channel input (seed-a's:
the forward convolution of grad_out, 64 channels, with the flipped weight, 3 channels): one input
row and tap kd is one warpgroup matrix product per k16 step, M = the row's 64 positions, K = the
input channels, N = (kh, kw, co). Column (kh, kw, co) of the row's position wi belongs to output row
hi - kh + PH at position wi - kw + PW; the accumulators' columns are KH slots of output rows (row h
in slot h mod KH), each input row's weights a window of a list that puts the right kh in each slot,
so nothing moves between accumulators, and a completed slot is summed along kw when its row is
written. Each output channel's sums use all of N, where the staged tensor-core template fills 21 of
24 columns of a narrower product and adds the kw partial sums through shared memory
(bench/probes/s15_dgrad_wgmma.py: seed-a's dgrad in bf16 0.47 ms against that template's 1.19).

The template serves bfloat16 and float16 (k16 steps) and float32 (k8 steps of tf32: one product
with precision 'tf32', three with 'ieee', 3xTF32: the weights split once into big and small tf32
parts, a row's A split at the product) on sm_90 (built for sm_90a), NCDHW, groups 1, stride and
dilation 1, padding the same on both sides and below the kernel along each dimension, input channels
a multiple of the K step with KD x CI / step A fragments in registers (at most MAX_FRAGMENTS, twice
that in float32), and N = KH x KW x CO rounded up to 8 at most MAX_N. It is rendered for one input size (its
sizes are constants): input width even and at most 64 (one M tile), output width at most 64
(slots_shape_problem).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .render import DIRECT_ARGS, InputSize, SHARED_BYTES_PER_BLOCK_SM90, Source, _environment, serving_tiles, templates_dir
from .spec import ConvSpec

SLOTS_TEMPLATE = "conv3d_fwd_slots.cu.j2"

ROW_ELEMENTS = 72    # a staged channel row: ldmatrix's 8 rows (16 bits), or a half-warp's 8-byte loads of 4 channels x 4
                     # position pairs (float32: 72 words, 8 mod 32), fall on distinct banks
SWIZZLED_ROW = 64    # float32's row with one stage: position p of channel c at p ^ 8 (c mod 4), the loads' banks distinct
TMA_ROW = 68         # float32's row staged by the copy engine (tma): 64 positions and the row's start 0 or 8 bytes into a
                     # 16-byte piece; channels 2 apart (A's K order) 136 words apart, 8 mod 32: the loads' banks distinct
TMA_ROW_16 = 64      # a 16-bit type's (tma): 128 bytes, the engine's 128-byte swizzle keeping the A loads' banks distinct;
                     # the row's start up to 12 bytes into a piece, so the width and that start fit 64 (tma_shape_problem)
TMA_ALIGN = {4: 128, 2: 1024}  # the copy engine's boxes start on 128 bytes, or 1024 swizzled: room to align the stages
MBARRIER = 8         # bytes of an mbarrier: two a staged plane and stage (tma)
RAW_STRIDE = 68      # floats of a stored column: a warp's stores (8 positions x 4 columns) on distinct banks
MAX_WIDTH = 64       # M of the wgmma: the input row's positions; the output row's too (the sums' buffer)
MAX_N = 128          # accumulators a thread: N / 2 (64) beside the A fragments
MAX_FRAGMENTS = 12   # A fragments a thread holds for one input row: KD x CI / 16 (4 registers each); float32's
                     # k8 fragments hold half the channels, so it takes twice as many (seed-b's 3 x 64 / 8)
THREADS = 256        # two warpgroups
PLANES = (2, 4, 6, 8)  # output planes a block: the tuner's choices
STAGES = (2, 1)        # staged input rows: two (a row staged two ahead), or one (float32 only; see SlotsTiles)
# a thread's accumulators and A fragments (core_registers), beside ~70 of addresses and staging: seed-a's dgrad with
# 4 planes (176) spilled and ran 5% slower than with 2 (bench/NOTES.md, session 16)
MAX_CORE_REGISTERS = 160
# the same staged by the copy engine (tma): seed-a's bf16 with 4 planes builds without spills in the consumers' 232
# registers and runs 0.343 ms against 2 planes' 0.427, staging grad_out 1.5 times, not 2 (bench/NOTES.md, session 20)
MAX_CORE_REGISTERS_TMA = 176
MAX_BOX = 256        # a copy engine's box dimension: the channel rows of one box (tma)


@dataclass(frozen=True)
class SlotsTiles:
    """The rotating-slots template's configuration: output planes a block, half of them a
    warpgroup's (an accumulator set each). A block stages planes + kd - 1 input planes, so more
    planes stage grad_out fewer times over, at the cost of registers, shared memory, and whole
    waves of blocks on small inputs. The tuner times them beside the other templates' tiles.

    stages=1 (float32 only) stages one input row at a time, not two: a row's A fragments are
    loaded into registers, then the stage is refilled with the next row while the row's products
    run. It frees a stage's shared memory for the weight lists, so all taps along d fit in one pass
    where two stages would take several (seed-a's tf32: 150 KB of lists; 3 passes stage grad_out 3
    times), at the cost of a second barrier a row and the next row's copies in the open.

    tma=True (any type but 3xTF32) stages the rows with the bulk tensor copy engine, asked for by a producer
    warpgroup (384 threads, its registers given to the other two by setmaxnreg). Each staged plane of each stage is a
    buffer of its own, refilled with its next row as soon as the threads that read it have their fragments, so the next
    row comes a row or two (stages) ahead and the row has no block-wide barrier, where cp.async has every thread issue
    small copies (32 a row on seed-a's tf32) after the row's barrier and wait for them. The engine fills what lies
    outside the input with zeros. A box starts on a 16-byte piece (the H100 refuses others), so a row's positions sit
    up to 12 bytes into their stage: 16-bit types then load A by 32-bit loads paired by a byte permute, not ldmatrix,
    whose rows must be 16-byte aligned. It needs each input plane a multiple of 16 bytes (tma_shape_problem)."""

    template: ClassVar[str] = SLOTS_TEMPLATE

    planes: int = 2  # output planes a block: 2, 4, 6 or 8
    stages: int = 2  # staged input rows: 2, or 1 in float32
    tma: bool = False  # rows staged by the bulk tensor copy engine (not 3xTF32), not by cp.async

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.planes not in PLANES:
            return f"planes={self.planes}: the rotating-slots template takes {', '.join(map(str, PLANES))} output planes a block"
        if self.stages not in STAGES:
            return f"stages={self.stages}: the rotating-slots template stages 1 or 2 input rows"
        if self.stages == 1 and spec.dtype != "float32":
            return f"stages=1: the rotating-slots template stages one row in float32 only, not {spec.dtype}"
        if self.tma and weight_parts(spec) != 1:
            return ("tma: the rotating-slots template stages rows by the copy engine in bfloat16, float16 and float32 with "
                    "precision 'tf32', not float32 with precision 'ieee' (3xTF32)")
        if self.tma and spec.in_channels > MAX_BOX:
            return f"tma: in_channels={spec.in_channels}, the copy engine's box takes at most {MAX_BOX} channel rows"
        most = MAX_CORE_REGISTERS_TMA if self.tma else MAX_CORE_REGISTERS
        if (regs := core_registers(spec, self.planes, self.stages)) > most:
            return (f"planes={self.planes}: {regs} registers a thread of accumulators and A fragments, at most {most}"
                    + (" (staged by the copy engine)" if self.tma else ""))
        # geometry() takes fewer taps along d a pass where all do not fit (seed-a's float32: one a pass)
        if (shared := geometry(spec, self.planes, self.stages, self.tma).shared_bytes) > SHARED_BYTES_PER_BLOCK_SM90:
            return f"{shared} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK_SM90}"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        """Why these tiles cannot run on inputs of `input_shape`, or None (slots_shape_problem, and
        tma_shape_problem with tma)."""
        return slots_shape_problem(spec, input_shape) or (tma_shape_problem(spec, input_shape) if self.tma else None)

    def __str__(self) -> str:
        return (f"slots planes={self.planes}" + (f" stages={self.stages}" if self.stages != 2 else "")
                + (" tma" if self.tma else ""))


def element_bytes(spec: ConvSpec) -> int:
    """Bytes of a staged element and of a list's element: float32's 4 (tf32), else 2."""
    return 4 if spec.dtype == "float32" else 2


def k_step(spec: ConvSpec) -> int:
    """Input channels a wgmma: k8 for tf32, k16 for 16-bit types (16 bytes of a list row either way)."""
    return 8 if spec.dtype == "float32" else 16


def weight_parts(spec: ConvSpec) -> int:
    """Lists of the weights: 2 for float32 'ieee' (3xTF32: big and small tf32 parts), else 1."""
    return 2 if spec.dtype == "float32" and spec.precision == "ieee" else 1


@dataclass(frozen=True)
class SlotsGeometry:
    """What the template sizes for one spec."""

    slot: int           # columns a slot: KW x CO
    ncol: int           # N: KH slots rounded up to 8
    list_rows: int      # rows of a weight list: slot x (KH - 1) + ncol
    taps: int           # taps along d a pass: KD, or a divisor of it where the lists of all KD do not fit
    weight_bytes: int   # every list: parts x taps x CI / step K steps x 2 halves
    row_stride: int     # bytes of a staged channel row: ROW_ELEMENTS elements, SWIZZLED_ROW with one stage, TMA_ROW (tma)
    stage_bytes: int    # one staged input row of the planes + KD - 1 input planes
    raw_bytes: int      # one completed slot, stored for the sums along kw
    raws: int = 4       # completed-slot buffers: 2 a warpgroup (alternating), or 1 where 2 do not fit
    align: int = 0      # bytes of room to align the stages (tma: TMA_ALIGN)
    passes: int = 1     # the launcher's runs of the kernel: KD / taps
    stages: int = 2     # staged input rows (SlotsTiles.stages)
    swizzle: bool = False  # rows of SWIZZLED_ROW floats, position p of channel c at p ^ 8 (c mod 4)
    tma: bool = False   # rows staged by the copy engine (SlotsTiles.tma): TMA_ROW floats, or TMA_ROW_16 elements
    staged: int = 0     # input planes staged: planes + taps - 1 (a buffer and two mbarriers each a stage with tma)

    @property
    def shared_bytes(self) -> int:
        return (self.weight_bytes + self.stages * self.stage_bytes + self.raws * self.raw_bytes + self.align
                + (2 * MBARRIER * self.staged * self.stages if self.tma else 0))


def core_registers(spec: ConvSpec, planes: int, stages: int = 2) -> int:
    """A thread's accumulators (planes / 2 sets of N / 2) and A fragments (planes / 2 + taps - 1
    input planes x in_channels / step, 4 registers each; taps: along d, a pass's)."""
    g = geometry(spec, planes, stages)
    return planes // 2 * g.ncol // 2 + 4 * (planes // 2 + g.taps - 1) * (spec.in_channels // k_step(spec))


def geometry(spec: ConvSpec, planes: int = 2, stages: int = 2, tma: bool = False) -> SlotsGeometry:
    """The template's sizes: the fewest passes (all KD taps along d in one where they fit), and for
    each, four completed-slot buffers or, where those do not fit, one a warpgroup at a barrier more a
    written row (float32 'ieee' on seed-b: its lists' big and small parts). Where nothing fits, the
    one-pass geometry, which problem() refuses. One stage (float32) stages rows of SWIZZLED_ROW
    floats: 72 would not leave seed-a's tf32 lists room (236 KB against 227). The copy engine (tma)
    stages float32's rows of TMA_ROW floats (16-bit types' of TMA_ROW_16, swizzled), with room to align the stages and
    two mbarriers a plane and stage (seed-a's tf32: 231,776 bytes)."""
    kd, kh, kw = spec.kernel_size
    slot = kw * spec.out_channels
    ncol = 8 * -(-kh * slot // 8)
    list_rows = slot * (kh - 1) + ncol
    swizzle = stages == 1 and spec.dtype == "float32" and not tma
    row = (TMA_ROW if spec.dtype == "float32" else TMA_ROW_16) if tma else SWIZZLED_ROW if swizzle else ROW_ELEMENTS
    row_stride = row * element_bytes(spec)

    def sized(taps: int, raws: int) -> SlotsGeometry:
        return SlotsGeometry(
            slot=slot, ncol=ncol, list_rows=list_rows, taps=taps,
            weight_bytes=weight_parts(spec) * taps * (spec.in_channels // k_step(spec)) * 2 * list_rows * 16,
            row_stride=row_stride, stage_bytes=(planes + taps - 1) * spec.in_channels * row_stride,
            raw_bytes=slot * RAW_STRIDE * 4, raws=raws, passes=kd // taps, stages=stages, swizzle=swizzle, tma=tma,
            staged=planes + taps - 1, align=TMA_ALIGN[element_bytes(spec)] if tma else 0)

    for taps in sorted((t for t in range(1, kd + 1) if kd % t == 0), reverse=True):
        for raws in (4, 2):
            if (g := sized(taps, raws)).shared_bytes <= SHARED_BYTES_PER_BLOCK_SM90:
                return g
    return sized(kd, 4)


def supports_slots(spec: ConvSpec) -> str | None:
    """None if the rotating-slots template serves `spec` (on an sm_90 GPU); otherwise why not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16", "float32"):
        return f"dtype {spec.dtype}: the rotating-slots template multiplies bfloat16, float16 or float32 (as tf32)"
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the rotating-slots template reads contiguous NCDHW only"
    if spec.groups != 1:
        return f"groups={spec.groups}: the rotating-slots template needs groups=1"
    if spec.stride != (1, 1, 1) or spec.dilation != (1, 1, 1):
        return "the rotating-slots template needs stride 1 and dilation 1"
    if spec.pad_before != spec.pad_after or any(p >= k for p, k in zip(spec.pad_before, spec.kernel_size)):
        return (f"padding {spec.pad_before} before, {spec.pad_after} after: the rotating-slots template needs the same "
                "padding on both sides, below the kernel's size along each dimension")
    step = k_step(spec)
    if spec.in_channels % step:
        return (f"in_channels={spec.in_channels}: the rotating-slots template needs a multiple of {step} in "
                f"{spec.dtype} (its K steps)")
    g, most = geometry(spec), MAX_FRAGMENTS * 16 // step
    if (fragments := g.taps * spec.in_channels // step) > most:
        return (f"{g.taps} x {spec.in_channels} input channels: the rotating-slots template holds taps along d x "
                f"in_channels / {step} = {fragments} A fragments in {spec.dtype}, at most {most}")
    if g.ncol > MAX_N:
        return (f"{kh}x{kw} taps x {spec.out_channels} output channels: N = {g.ncol} columns, the rotating-slots "
                f"template takes at most {MAX_N}")
    return SlotsTiles().problem(spec)


def slots_shape_problem(spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
    """Why the template cannot run on inputs of `input_shape`, or None."""
    _, _, d, h, w = input_shape
    ow = spec.output_size(d, h, w)[2]
    if w % 2 or w > MAX_WIDTH:
        return f"input width {w}: the rotating-slots template needs an even width, at most {MAX_WIDTH}"
    if ow > MAX_WIDTH:
        return f"output width {ow}: the rotating-slots template takes at most {MAX_WIDTH}"
    return None


def tma_shape_problem(spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
    """Why the copy engine cannot stage rows of inputs of `input_shape`, or None: its strides are
    multiples of 16 bytes, so an input plane (h x w elements) must be a multiple of 16 bytes: of 4
    floats, or of 8 16-bit elements. A 16-bit row sits up to 8 - gcd(w, 8) elements into its
    TMA_ROW_16 (a box starts on a 16-byte piece), which must hold it."""
    h, w = input_shape[3:]
    if (h * w) % (piece := 16 // element_bytes(spec)):
        return f"input planes of {h}x{w}: staging {spec.dtype} by the copy engine needs h x w a multiple of {piece}"
    if spec.dtype != "float32" and w + (start := (8 - math.gcd(w, 8)) % 8) > TMA_ROW_16:
        return (f"input width {w}: staging {spec.dtype} by the copy engine takes rows of {TMA_ROW_16} elements, which a "
                f"row starting {start} elements in does not fit")
    return None


def slots_candidates(spec: ConvSpec) -> list[SlotsTiles]:
    """The autotuning space: the output planes a block that fit, each with two stages and, in
    float32 where one stage takes fewer passes than two, with one; staged by cp.async, then by the
    copy engine (tma; not 3xTF32), where they fit."""

    def offered(planes: int, tma: bool) -> list[SlotsTiles]:
        two, one = SlotsTiles(planes, 2, tma), SlotsTiles(planes, 1, tma)
        two_fits = two.problem(spec) is None
        fewer = lambda: geometry(spec, planes, 1, tma).passes < geometry(spec, planes, 2, tma).passes  # noqa: E731
        return [two] * two_fits + [one] * (one.problem(spec) is None and (not two_fits or fewer()))

    return [t for tma in (False, True) for planes in PLANES for t in offered(planes, tma)]


def render_slots(spec: ConvSpec, tiles: SlotsTiles | None = None, wide: bool = False,
                 size: tuple[int, int, int] | None = None) -> Source:
    """The rotating-slots template for `spec` on inputs of `size` (the input's d, h, w; required: the
    kernel folds it). Its offsets are 64-bit wherever they can be large, so `wide` does not change
    the source."""
    tiles = serving_tiles(spec, tiles, "rotating-slots template", supports_slots(spec), lambda _: SlotsTiles())
    if size is None:
        raise ValueError("the rotating-slots template is built for one input size: pass size=(d, h, w)")
    sized = InputSize.of(spec, size)
    if problem := tiles.shape_problem(spec, (1, spec.in_channels, *sized.size)):
        raise ValueError(problem)
    g = geometry(spec, tiles.planes, tiles.stages, tiles.tma)
    kh, ph = spec.kernel_size[1], spec.pad_before[1]
    hpad = max(-(-sized.size[1] // kh) * kh, 2)  # input rows walked: at least 2, as two stages stage two rows ahead
    flush = list(range(max(hpad + ph - kh + 1, 0), sized.out_size[1]))  # output rows after the last input row's
    name = f"conv3d_fwd_slots_{spec.tag}" + sized.suffix
    body = _environment(templates_dir()).get_template(SLOTS_TEMPLATE).render(
        spec=spec, tiles=tiles, geometry=g, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS,
        size=sized.size, out_size=sized.out_size, raw_stride=RAW_STRIDE, flush=flush, hpad=hpad,
        k_step=k_step(spec), element=element_bytes(spec), split=weight_parts(spec) == 2)
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "product": (f"per input row and kd: wgmma m64n{g.ncol}k{k_step(spec)} x {spec.in_channels // k_step(spec)}"
                    f"{' (tf32)' if spec.dtype == 'float32' else ''}{' x 3 (3xTF32)' if weight_parts(spec) == 2 else ''}"
                    f": M = 64 positions, N = {kh} slots x {g.slot} (kw, co), K = {spec.in_channels} channels"),
        "shared": f"{g.shared_bytes} bytes per block",
        "threads": (f"{THREADS + 128 * g.tma}: {tiles.planes} output planes, {tiles.planes + g.taps - 1} input planes staged"
                    + (", one row at a time" if g.stages == 1 else "") + (" by the copy engine" if g.tma else "")
                    + (f"; {g.passes} passes of {g.taps} taps along d" if g.passes > 1 else "")),
        "input size": sized.param,
    }
    return Source(name=name, template=SLOTS_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=DIRECT_ARGS, params=params)
