"""Rendering the tensor-core forward template, templates/conv3d_fwd_mma.cu.j2: an implicit GEMM.

The GEMM: M = output positions (n, od, oh, ow), N = the output channels of one group, K = the
group's input channels times the taps. Each lane of a warp gathers its own part of the A
operand (the im2col matrix, never stored) straight from global memory into the registers the
MMA reads. The MMA fixes which K columns a lane holds; since the order of K is ours to choose,
it is chosen so that every lane's loads sit at compile-time offsets from one pointer per row:

  K is cut into segments: one input row (ci, kd, kh) and SPAN consecutive taps along w
  (SPAN = 4 or 8, past kw the taps are zero padding). Lane t of a quad holds taps t or 2t, 2t+1
  of a segment (the part of kw that depends on the lane goes into its row pointer); which
  segment and which remaining tap an A register holds is fixed by the register, so the
  offset of every load is `ci * dhw + kd * dd * hw + kh * dh * w + kw * dw` with all
  coefficients known when rendering. The weights are staged in shared memory in the same
  column order (`logical_k` in the template; static_asserts there check it against the
  gather order computed here).

A second way to feed A (MmaTiles.a_from = "shared"): a tile is block_m / tile_w lines of tile_w
positions along w (a line: one (od, oh) of a sample), and before its MMAs a block copies the
input its tile reads into shared memory: per input row (ci, kd, kh) of the body and per line,
the SEG consecutive elements along w that the line's taps touch, zeros outside the input. The
lanes then read A from shared memory at compile-time offsets from one address per row of the
MMA. Where a lane's 16-bit pair is two adjacent taps (span 8, dilation 1 along w), each staged
line is kept twice, the second copy one element to the left, so every pair is one aligned
32-bit load whatever the lane's parity ("copies").

Tile sizes are MmaTiles; `mma_candidates` is the autotuning space.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from .render import (DIRECT_ARGS, InputSize, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM, Source,
                     _environment, serving_tiles, templates_dir)
from .spec import ConvSpec

MMA_TEMPLATE = "conv3d_fwd_mma.cu.j2"

# K steps (MMAs of 16 columns for 16-bit types, 8 for tf32) unrolled per tile. Beyond this, K
# is walked in a run-time loop over blocks of input channels ("bodies") of at most
# MAX_BODY_STEPS steps each, the taps within a body unrolled. Code size and compile time:
# 'wide' (64 input channels x 3x3x3, 144 steps in bfloat16) fully unrolled takes ptxas 80 s
# and spills; as 16 bodies of 9 steps, a few seconds.
MAX_UNROLLED_STEPS = 64
MAX_BODY_STEPS = 16
# Per-row tap masks are one 32-bit word: kd, kh and the w taps of a segment each take a bit.
MASK_WORD_BITS = 32
# Shared A: input rows staged per group between branches, so ptxas keeps at most this many
# loads in flight; fewer where K is walked in a loop (the accumulators are live while later
# bodies are staged; 16 spilled a few bytes on 'wide').
STAGE_GROUP_ROWS = 16
STAGE_GROUP_ROWS_LOOP = 8
# Tile choices the autotuner times per spec (each is built and timed once per spec and shape).
MAX_CANDIDATES = 8


@dataclass(frozen=True)
class KLayout:
    """How K is ordered: segments of SPAN taps along w, SEGMENTS_PER_STEP per MMA K step."""

    sixteen_bit: bool   # bfloat16/float16 (m16n8k16) rather than tf32 (m16n8k8)
    span: int           # taps along w per segment: 4 or 8
    blocks: int         # segments per input row (ci, kd, kh): ceil(kw / span)
    segments: int       # in_per_group * kd * kh * blocks
    k: int              # the weights' K: in_per_group * kernel volume

    @property
    def step(self) -> int:
        """K columns per MMA."""
        return 16 if self.sixteen_bit else 8

    @property
    def segments_per_step(self) -> int:
        return self.step // self.span

    @property
    def steps(self) -> int:
        return -(-self.segments // self.segments_per_step)

    @property
    def columns(self) -> int:
        """K as the MMAs see it, padding included."""
        return self.steps * self.step

    @property
    def lane_kw(self) -> int:
        """kw = lane_kw * t + the register's part; t = lane % 4."""
        return 2 if self.sixteen_bit and self.span == 8 else 1

    def place(self, slot: int, half: int) -> tuple[int, int]:
        """(segment within the step, kw offset) of the element in A register `slot` (0: K columns
        0-7 of the step for 16-bit / 0-3 for tf32, 1: the rest) and `half` (16-bit: low or high)."""
        if self.sixteen_bit:
            return (slot, half) if self.span == 8 else (2 * slot + half, 0)
        return (0, 4 * slot) if self.span == 8 else (slot, 0)

    def column(self, t: int, slot: int, half: int) -> int:
        """The MMA's K column (within a step) of that element in lane t of a quad (PTX ISA's
        fragment layouts for m16n8k16 .bf16/.f16 and m16n8k8 .tf32)."""
        return 2 * t + half + 8 * slot if self.sixteen_bit else t + 4 * slot


def k_layout(spec: ConvSpec) -> KLayout:
    kd, kh, kw = spec.kernel_size
    span = 4 if kw <= 4 else 8
    blocks = -(-kw // span)
    return KLayout(sixteen_bit=spec.dtype != "float32", span=span, blocks=blocks,
                   segments=spec.in_per_group * kd * kh * blocks, k=spec.in_per_group * spec.kernel_volume)


@dataclass(frozen=True)
class MmaTiles:
    """Tile sizes of the tensor-core template (the autotuner's search space)."""

    template: ClassVar[str] = MMA_TEMPLATE

    block_m: int        # output positions per tile
    block_n: int        # output channels per tile (at most the group's, rounded up to 8)
    warps_m: int        # warps along M; each covers block_m / warps_m rows, a multiple of 16
    warps_n: int        # warps along N; each covers block_n / warps_n channels, a multiple of 8
    blocks_per_sm: int = 2  # promised to ptxas (__launch_bounds__): caps registers per thread
    a_from: Literal["global", "shared"] = "global"  # where lanes read A: gathered from global memory, or staged
    tile_w: int = 0     # shared A: positions along w per tile line (block_m / tile_w lines); 0 for global

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def warp_m(self) -> int:
        return self.block_m // self.warps_m

    @property
    def warp_n(self) -> int:
        return self.block_n // self.warps_n

    @property
    def max_registers(self) -> int:
        return min(255, REGISTERS_PER_SM // (self.threads * self.blocks_per_sm) // 8 * 8)

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.warps_m < 1 or self.warps_n < 1 or self.threads > 1024:
            return f"{self.warps_m}x{self.warps_n} warps is not 1 to 32 warps"
        if self.block_m % (16 * self.warps_m) or not 16 <= self.warp_m <= 64:
            return f"block_m={self.block_m} does not give each of {self.warps_m} warps 16 to 64 rows in steps of 16"
        if self.block_n % (8 * self.warps_n) or not 8 <= self.warp_n <= 64:
            return f"block_n={self.block_n} does not give each of {self.warps_n} warps 8 to 64 channels in steps of 8"
        if self.block_n > _round_up(spec.out_per_group, 8):
            return f"block_n={self.block_n} exceeds the {spec.out_per_group} output channels per group"
        if self.blocks_per_sm < 1 or self.max_registers < 64:
            return f"{self.blocks_per_sm} blocks of {self.threads} threads leave fewer than 64 registers each"
        if self.a_from == "global" and self.tile_w != 0:
            return f"tile_w={self.tile_w} applies to a_from='shared' only (global A tiles are flat, tile_w=0)"
        if self.a_from == "shared" and (self.tile_w not in (16, 32, 64, 128) or self.block_m % self.tile_w):
            return f"tile_w={self.tile_w} is not one of 16, 32, 64, 128 dividing block_m={self.block_m}"
        if self.a_from not in ("global", "shared"):
            return f"a_from={self.a_from!r} is not 'global' or 'shared'"
        if isinstance(plan := _plan(spec, self), str):
            return plan
        return None

    @property
    def lines(self) -> int:
        """Shared A: lines (od, oh) per tile."""
        return self.block_m // self.tile_w if self.tile_w else 0

    def __str__(self) -> str:
        shared = f" a_from=shared tile_w={self.tile_w}" if self.a_from == "shared" else ""
        return (f"block_m={self.block_m} block_n={self.block_n} warps_m={self.warps_m} "
                f"warps_n={self.warps_n} blocks_per_sm={self.blocks_per_sm}{shared}")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Staging:
    """Shared A: how a body's input is laid out in shared memory, in elements unless named bytes.
    Element e of line l of staged row r (ci, kd, kh of the body) is x at w = ow0 * SW - PW + e;
    it sits at r * row_pitch + l * seg_pitch + e, and with two copies also at
    r * row_pitch + copy_offset + l * seg_pitch + e - 1."""

    rows: int           # input rows (ci, kd, kh) per body
    seg: int            # elements a line of tile_w positions reads along w, padding taps included
    seg_pitch: int      # elements per staged line (even, so pairs stay 32-bit aligned)
    copies: int         # 2: kept again one element to the left, so odd pairs are aligned loads
    copy_offset: int    # where the second copy starts in a row; 32 mod 64 16-bit elements (16 banks over)
    row_pitch: int
    pairs: bool         # 16-bit pairs of adjacent taps, one 32-bit load each; else one load per element
    bytes: int


def _staging(spec: ConvSpec, layout: KLayout, tiles: MmaTiles, ci_per_body: int) -> Staging:
    kd_, kh_, _ = spec.kernel_size
    sw, dw = spec.stride[2], spec.dilation[2]
    element = 2 if layout.sixteen_bit else 4
    seg = (tiles.tile_w - 1) * sw + (layout.blocks * layout.span - 1) * dw + 1
    seg_pitch = _round_up(seg, 2)
    pairs = layout.sixteen_bit and layout.span == 8 and dw == 1
    copies = 2 if pairs and sw % 2 else 1
    line_block = tiles.lines * seg_pitch
    copy_offset = _round_up(line_block - 32, 64) + 32 if copies == 2 else 0
    row_pitch = _round_up(copy_offset + line_block, 2)
    rows = ci_per_body * kd_ * kh_
    return Staging(rows, seg, seg_pitch, copies, copy_offset, row_pitch, pairs,
                   _round_up(rows * row_pitch * element, 16))


@dataclass(frozen=True)
class SharedPlan:
    """How a block walks K, and its shared memory in bytes: weights, output stage (which shares
    its bytes with staged A, if any: the epilogue starts after the last MMA), bias."""

    bodies: int         # run-time iterations over K, each CI_PER_BODY input channels
    ci_per_body: int
    body_steps: int     # K steps unrolled per body
    resident: bool      # all weights at once, staged once per block; else one body per buffer, two buffers
    b_pitch: int        # bytes per weight row (output channel); an odd multiple of 16
    epilogue_n: int     # output channels staged per epilogue pass
    c_pitch: int        # bytes per staged output row; 16 mod 64, so lanes' writes miss each other
    b_bytes: int
    c_bytes: int        # the output stage and staged A, whichever is larger
    bias_bytes: int
    staging: Staging | None = None  # shared A only
    b_parts: int = 1    # 3xTF32: 2 where the weights are split once, both parts resident; 1: split per K step

    @property
    def total(self) -> int:
        return self.b_bytes + self.c_bytes + self.bias_bytes


def _body_options(spec: ConvSpec, layout: KLayout, max_steps: int) -> list[tuple[int, int]]:
    """Every (bodies, input channels per body) with whole K steps per body and at most
    max_steps, the most channels first."""
    per_channel = layout.segments // spec.in_per_group
    fits = [c for c in range(1, spec.in_per_group + 1) if spec.in_per_group % c == 0
            and c * per_channel % layout.segments_per_step == 0
            and c * per_channel // layout.segments_per_step <= max_steps]
    return [(spec.in_per_group // c, c) for c in reversed(fits)]


def _bodies(spec: ConvSpec, layout: KLayout, max_steps: int) -> tuple[int, int] | None:
    """(bodies, input channels per body) with whole K steps per body and at most max_steps,
    the most channels that allow; None if no block of input channels fits."""
    options = _body_options(spec, layout, max_steps)
    return options[0] if options else None


@dataclass(frozen=True)
class _Budget:
    """What both ways of feeding A start from: element sizes, the output stage's pitch, the
    shared memory one block may have, the bias's bytes, and how many copies of the weights."""

    layout: KLayout
    element: int        # bytes of an A or B element
    c_pitch: int        # bytes per staged output row; 16 mod 64, so lanes' writes miss each other
    budget: int
    bias_bytes: int
    b_parts: int        # 2: 3xTF32 weights split once, big and small parts in shared memory; else 1

    def weights(self, tiles: MmaTiles, resident: bool, body_steps: int) -> tuple[int, int]:
        """(bytes per weight row, bytes of weights): all of K once, or a body in each of two buffers;
        with split weights, the small parts as many bytes again."""
        if resident:
            b_pitch = self.layout.columns * self.element + 16
            return b_pitch, self.b_parts * tiles.block_n * b_pitch
        b_pitch = body_steps * self.layout.step * self.element + 16
        return b_pitch, self.b_parts * 2 * tiles.block_n * b_pitch


def _budgets(spec: ConvSpec, tiles: MmaTiles) -> list[_Budget]:
    """The budgets to plan with, in order of preference. 3xTF32 first tries its weights split
    once, both parts resident (the split then costs nothing per K step); where they do not fit,
    the weights are split again per K step, as the MMAs read them (one copy in shared memory)."""
    layout = k_layout(spec)
    one = _Budget(layout, 2 if layout.sixteen_bit else 4, tiles.block_m * spec.torch_dtype.itemsize + 16,
                  min(SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM // tiles.blocks_per_sm - 1024),
                  4 * tiles.block_n, 1)
    return [dataclasses.replace(one, b_parts=2), one] if splits_tf32(spec) else [one]


def _too_many_steps(spec: ConvSpec, layout: KLayout, held: str = "") -> str:
    return (f"K = {layout.k} needs {layout.steps} MMA steps, more than the {MAX_UNROLLED_STEPS} unrolled "
            f"{held}at once, and no block of the {spec.in_per_group} input channels per group gives whole "
            f"bodies of at most {MAX_BODY_STEPS}")


def _plan(spec: ConvSpec, tiles: MmaTiles) -> SharedPlan | str:
    plan_with = _shared_plan if tiles.a_from == "shared" else _global_plan
    *split, b = _budgets(spec, tiles)
    # split weights only where both parts stay resident
    if split and isinstance(found := plan_with(spec, tiles, split[0], resident_only=True), SharedPlan):
        return found
    return plan_with(spec, tiles, b)


def _global_plan(spec: ConvSpec, tiles: MmaTiles, b: _Budget, resident_only: bool = False) -> SharedPlan | str:
    layout = b.layout
    # Weights stay in shared memory for the whole kernel if they fit next to an output stage
    # of 8 channels; otherwise a body's worth streams through each of two buffers.
    resident = b.weights(tiles, True, layout.steps)[1] + 8 * b.c_pitch + b.bias_bytes <= b.budget
    if resident_only and not resident:
        return "the weights do not fit in shared memory whole"
    if resident and layout.steps <= MAX_UNROLLED_STEPS:
        bodies, ci_per_body = 1, spec.in_per_group
    elif (found := _bodies(spec, layout, MAX_BODY_STEPS)) is not None:
        bodies, ci_per_body = found
    else:
        return _too_many_steps(spec, layout, "" if resident else "or held in shared memory ")
    body_steps = layout.steps // bodies
    b_pitch, b_bytes = b.weights(tiles, resident, body_steps)
    # The largest epilogue pass (a multiple of 8 channels dividing block_n) that fits.
    for epilogue_n in range(tiles.block_n, 0, -8):
        if tiles.block_n % epilogue_n == 0 and b_bytes + epilogue_n * b.c_pitch + b.bias_bytes <= b.budget:
            return SharedPlan(bodies, ci_per_body, body_steps, resident, b_pitch, epilogue_n, b.c_pitch,
                              b_bytes, epilogue_n * b.c_pitch, b.bias_bytes, b_parts=b.b_parts)
    return (f"{b_bytes + 8 * b.c_pitch + b.bias_bytes} bytes of shared memory per block exceed the "
            f"{b.budget} that {tiles.blocks_per_sm} blocks per SM leave")


def _shared_plan(spec: ConvSpec, tiles: MmaTiles, b: _Budget, resident_only: bool = False) -> SharedPlan | str:
    """Shared A: weights resident if they fit next to the largest body of staged A that does,
    else streamed; the body (input channels staged at once) as large as fits."""
    layout = b.layout
    options = ([(1, spec.in_per_group)] if layout.steps <= MAX_UNROLLED_STEPS else []) \
        + [o for o in _body_options(spec, layout, MAX_BODY_STEPS) if o[0] > 1]
    if not options:
        return _too_many_steps(spec, layout)
    smallest = None
    for resident in (True,) if resident_only else (True, False):
        for bodies, ci_per_body in options:
            if not resident and bodies == 1:
                continue  # streamed weights need a body to stream ahead of
            body_steps = layout.steps // bodies
            b_pitch, b_bytes = b.weights(tiles, resident, body_steps)
            staging = _staging(spec, layout, tiles, ci_per_body)
            need = b_bytes + max(staging.bytes, 8 * b.c_pitch) + b.bias_bytes
            smallest = need if smallest is None else min(smallest, need)
            if need > b.budget:
                continue
            for epilogue_n in range(tiles.block_n, 0, -8):
                stage = max(staging.bytes, epilogue_n * b.c_pitch)
                if tiles.block_n % epilogue_n == 0 and b_bytes + stage + b.bias_bytes <= b.budget:
                    return SharedPlan(bodies, ci_per_body, body_steps, resident, b_pitch, epilogue_n, b.c_pitch,
                                      b_bytes, _round_up(stage, 16), b.bias_bytes, staging, b.b_parts)
    return (f"{smallest} bytes of shared memory per block (weights, staged A) exceed the "
            f"{b.budget} that {tiles.blocks_per_sm} blocks per SM leave")


# 3xTF32 keeps float32's bar (1e-5) on short sums only: its error grew with K on the H100
# (1.8e-6 at K = 315, seed-a; 1.1e-5 at K = 1728, 'wide'), so longer K stays on CUDA cores.
MAX_SPLIT_K = 512


def splits_tf32(spec: ConvSpec) -> bool:
    """float32 with precision 'ieee' runs as 3xTF32: each operand split into a tf32 part and the
    tf32 rounding of the rest, three MMAs per product (float32's accuracy on tensor cores)."""
    return spec.dtype == "float32" and spec.precision == "ieee"


def supports_mma(spec: ConvSpec) -> str | None:
    """None if the tensor-core template serves `spec`; otherwise the reason it does not."""
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the tensor-core template indexes contiguous NCDHW tensors only"
    if splits_tf32(spec) and (k := spec.in_per_group * spec.kernel_volume) > MAX_SPLIT_K:
        return (f"float32 with precision='ieee' runs as 3xTF32 for K = input channels per group x taps "
                f"up to {MAX_SPLIT_K} (float32 accuracy); here K = {k}")
    layout = k_layout(spec)
    if len(_mask_bits(spec, layout)[3]) > MASK_WORD_BITS:
        return f"kernel {'x'.join(map(str, spec.kernel_size))} needs more than {MASK_WORD_BITS} tap-mask bits per row"
    return default_mma_tiles(spec).problem(spec)


def default_mma_tiles(spec: ConvSpec) -> MmaTiles:
    """8 warps, each 32 positions x all the block's channels (up to 64 accumulators per thread),
    two blocks per SM (128 registers a thread) where K is unrolled whole; one block per SM
    where K is walked in a loop, whose pointers and streamed weights need more registers."""
    block_n = min(64, _round_up(spec.out_per_group, 8))
    tiles = MmaTiles(block_m=256, block_n=block_n, warps_m=8, warps_n=1, blocks_per_sm=2)
    plan = _plan(spec, tiles)
    if isinstance(plan, str) or plan.bodies > 1 or splits_tf32(spec):
        tiles = MmaTiles(block_m=256, block_n=block_n, warps_m=8, warps_n=1, blocks_per_sm=1)
    return tiles


def mma_candidates(spec: ConvSpec) -> list[MmaTiles]:
    """The autotuning space. All put a block's channels (up to 64) in every warp, so each A
    element is read once per block; they differ in rows per warp (32 or 64: more rows read each
    B fragment for more MMAs), in warps per SM (registers per thread against latency hiding),
    and in where A comes from: gathered from global memory, or staged in shared memory in
    tiles of lines 64 or 32 positions along w (the output's width decides which wastes less)."""
    block_n = min(64, _round_up(spec.out_per_group, 8))
    if splits_tf32(spec):
        # 8 or 12 warps an SM: the split parts need ~150-250 registers next to the accumulators
        # (12 where the weights are split once, in shared memory: 164 registers on seed-b).
        found = [MmaTiles(256, block_n, 8, 1, 1), MmaTiles(128, block_n, 4, 1, 2),
                 MmaTiles(256, block_n, 8, 1, 1, "shared", 64), MmaTiles(256, block_n, 8, 1, 1, "shared", 32),
                 MmaTiles(512, block_n, 8, 1, 1, "shared", 64), MmaTiles(128, block_n, 4, 1, 2, "shared", 64),
                 MmaTiles(128, block_n, 4, 1, 3), MmaTiles(128, block_n, 4, 1, 3, "shared", 64)]
        return [t for t in found if t.problem(spec) is None
                and (t.blocks_per_sm < 3 or _plan(spec, t).b_parts == 2)]  # 12 warps: split once only
    found = [default_mma_tiles(spec),
             MmaTiles(block_m=256, block_n=block_n, warps_m=8, warps_n=1, blocks_per_sm=2),
             MmaTiles(block_m=128, block_n=block_n, warps_m=4, warps_n=1, blocks_per_sm=4),
             MmaTiles(block_m=512, block_n=block_n, warps_m=8, warps_n=1, blocks_per_sm=1)]
    # Shared A: 2 blocks of 256 positions or 4 of 128 an SM (128 registers); where that does not
    # fit or the weights stream (their registers, the next body's, live next to the
    # accumulators: 128 spilled on 'wide'), 1 block of 256 or 3 of 128 (168 registers).
    staged = []
    for tiles, fewer in ((MmaTiles(256, block_n, 8, 1, 2, "shared", 64), 1),
                         (MmaTiles(128, block_n, 4, 1, 4, "shared", 64), 3)):
        plan = _plan(spec, tiles)
        staged.append(tiles if isinstance(plan, SharedPlan) and plan.resident
                      else dataclasses.replace(tiles, blocks_per_sm=fewer))
    staged += [dataclasses.replace(t, tile_w=32) for t in staged]
    # 64 rows a warp: each B fragment (most of the shared-memory reads per MMA) serves 4 MMAs, not 2.
    staged.append(MmaTiles(512, block_n, 8, 1, 1, "shared", 64))
    return [t for t in dict.fromkeys(found + staged) if t.problem(spec) is None][:MAX_CANDIDATES]


# ---- what the template unrolls ---------------------------------------------------------------

@dataclass(frozen=True)
class Tap:
    """One element of a row's A registers in one K step."""

    slot: int            # A register pair: 0 -> registers (rr), 1 -> (rr + 2)
    half: int            # 16-bit types: low (0) or high (1) half of the register
    offset: str | None   # from the lane's row pointer, in elements; None: K padding, a zero
    bits: int            # mask bits that must all be set for the tap to lie inside the input
    note: str            # "ci=0 kd=1 kh=2 kw=2t+1"
    row: int | None      # input row (ci, kd, kh) as ci * kd * kh flattened; None for padding
    kw: int              # kw, less the lane's part


def _mask_bits(spec: ConvSpec, layout: KLayout) -> tuple[list, list, list, dict]:
    """Bits of the per-row tap mask: kd (if d is padded), kh (if h is padded), and each w tap
    offset of a segment (if w is padded or kw is not a multiple of the span)."""
    kd_, kh_, kw_ = spec.kernel_size
    padded = [b + a > 0 for b, a in zip(spec.pad_before, spec.pad_after)]
    bit = 0
    d_bits, h_bits, w_bits = [], [], []
    if padded[0]:
        d_bits, bit = [(kd, bit + kd) for kd in range(kd_)], bit + kd_
    if padded[1]:
        h_bits, bit = [(kh, bit + kh) for kh in range(kh_)], bit + kh_
    # w: every tap offset of a segment where w is padded; else those some lane takes past kw.
    offsets = sorted({b * layout.span + layout.place(slot, half)[1]
                      for b in range(layout.blocks) for slot in (0, 1) for half in (0, 1)})
    last_lane = 3 * layout.lane_kw
    offsets = [kw for kw in offsets if padded[2] or kw + last_lane >= kw_]
    w_bits = [(kw, bit + i) for i, kw in enumerate(offsets)]
    everything = {("d", kd): b for kd, b in d_bits} | {("h", kh): b for kh, b in h_bits} \
        | {("w", kw): b for kw, b in w_bits}
    return d_bits, h_bits, w_bits, everything


def _times(coefficient: int, stride: str) -> str:
    """coefficient * stride as C++, leaving out zeros and ones: '', 'x_hw', '2 * x_hw', '3'."""
    if coefficient == 0 or not stride:
        return str(coefficient) if coefficient else ""
    return stride if coefficient == 1 else f"{coefficient} * {stride}"


def _steps(spec: ConvSpec, layout: KLayout, bits: dict, count: int) -> list[list[Tap]]:
    """The taps of the first `count` K steps (one body)."""
    kd_, kh_, kw_ = spec.kernel_size
    dd, dh, dw = spec.dilation
    lane = "2t" if layout.lane_kw == 2 else "t"
    halves = (0, 1) if layout.sixteen_bit else (0,)
    steps = []
    for step in range(count):
        taps = []
        for slot in (0, 1):
            for half in halves:
                local, kw_offset = layout.place(slot, half)
                segment = step * layout.segments_per_step + local
                if segment >= layout.segments:
                    taps.append(Tap(slot, half, None, 0, "K padding", None, 0))
                    continue
                row, block = divmod(segment, layout.blocks)
                ci, rest = divmod(row, kd_ * kh_)
                kd, kh = divmod(rest, kh_)
                kw = block * layout.span + kw_offset  # plus the lane's part
                terms = [_times(ci, "x_dhw"), _times(kd * dd, "x_hw"), _times(kh * dh, "x_w"), _times(kw * dw, "")]
                mask = 1 << bits[("d", kd)] if ("d", kd) in bits else 0
                mask |= 1 << bits[("h", kh)] if ("h", kh) in bits else 0
                mask |= 1 << bits[("w", kw)] if ("w", kw) in bits else 0
                note = f"ci={ci} kd={kd} kh={kh} kw={f'{kw}+' if kw else ''}{lane}"
                taps.append(Tap(slot, half, " + ".join(t for t in terms if t) or "0", mask, note, row, kw))
        steps.append(taps)
    return steps


def _column_checks(spec: ConvSpec, layout: KLayout, steps: list[list[Tap]], limit: int = 96) -> list[tuple[int, int]]:
    """(K column, weight index or -1) pairs from the gather order of the first body, for a
    static_assert that the template's weight order agrees: its first and last steps, at most
    `limit` columns."""
    kw_ = spec.kernel_size[2]
    pairs = {}
    chosen = list(range(len(steps)))
    per_step = layout.step
    if len(chosen) * per_step > limit:
        keep = limit // per_step // 2
        chosen = chosen[:keep] + chosen[-keep:]
    for step in chosen:
        for tap in steps[step]:
            for t in range(4):
                column = step * layout.step + layout.column(t, tap.slot, tap.half)
                kw = tap.kw + layout.lane_kw * t
                pairs[column] = -1 if tap.row is None or kw >= kw_ else tap.row * kw_ + kw
    return sorted(pairs.items())


def render_mma(spec: ConvSpec, tiles: MmaTiles | None = None, wide: bool = False,
               size: tuple[int, int, int] | None = None) -> Source:
    """The tensor-core template for `spec`; `wide` selects 64-bit offsets (see render.WIDE_INDEX_ELEMENTS);
    with `size` (the input's d, h, w) for inputs of that size only (sizes known when compiling)."""
    tiles = serving_tiles(spec, tiles, "tensor-core template", supports_mma(spec), default_mma_tiles)
    layout = k_layout(spec)
    shared = _plan(spec, tiles)
    d_bits, h_bits, w_bits, bits = _mask_bits(spec, layout)
    steps = _steps(spec, layout, bits, shared.body_steps)
    sized = InputSize.of(spec, size)
    name = f"conv3d_fwd_mma_{spec.tag}" + ("_i64" if wide else "") + sized.suffix
    kd_, kh_, _ = spec.kernel_size
    dd, dh, _ = spec.dilation
    staging = shared.staging
    stage_rows = [(r, *divmod(r, kd_ * kh_)[:1], *divmod(r % (kd_ * kh_), kh_)) for r in range(staging.rows)] \
        if staging else []

    def offset_of(ci: int, kd: int, kh: int) -> str:
        """A staged row's offset from its cell's pointer, in elements, as C++."""
        return " + ".join(t for t in (_times(ci, "x_dhw"), _times(kd * dd, "x_hw"), _times(kh * dh, "x_w")) if t)

    body = _environment(templates_dir()).get_template(MMA_TEMPLATE).render(
        spec=spec, tiles=tiles, layout=layout, shared=shared, steps=steps, staging=staging,
        stage_rows=stage_rows, stage_group=STAGE_GROUP_ROWS if shared.bodies == 1 else STAGE_GROUP_ROWS_LOOP, offset_of=offset_of,
        pad_d=spec.pad_before[0] + spec.pad_after[0] > 0, pad_h=spec.pad_before[1] + spec.pad_after[1] > 0,
        d_bits=d_bits, h_bits=h_bits, w_bits=w_bits, checks=bool(bits),
        column_checks=_column_checks(spec, layout, steps),
        name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS, wide=wide,
        size=sized.size, out_size=sized.out_size)
    mma = ("m16n8k16 " + spec.dtype if layout.sixteen_bit else "m16n8k8 tf32" if spec.precision == "tf32"
           else "m16n8k8 3xTF32 (float32 split into tf32 parts, three MMAs)")
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "mma": f"{mma}, float32 accumulate",
        "k": (f"{layout.k} -> {layout.columns} columns: {layout.segments} segments of {layout.span} taps "
              f"along w, {layout.segments_per_step} per K step"),
        "k loop": (f"unrolled, {layout.steps} steps" if shared.bodies == 1 else
                   f"{shared.bodies} bodies of {shared.ci_per_body} input channels, {shared.body_steps} steps each"),
        "weights": "resident in shared memory" if shared.resident else "streamed a body ahead through two buffers",
        "a": ("gathered per element from global memory" if staging is None else
              f"staged in shared memory: {tiles.lines} lines x {tiles.tile_w} positions, {staging.rows} rows a body, "
              f"{staging.seg} elements a line, {staging.copies} "
              f"{'copies' if staging.copies > 1 else 'copy'}, {'32-bit pairs' if staging.pairs else 'one load an element'}"),
        "shared": f"{shared.total} bytes per block; epilogue {shared.epilogue_n} channels per pass",
        "offsets": "64-bit" if wide else "32-bit",
        "input size": sized.param,
    }
    return Source(name=name, template=MMA_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=DIRECT_ARGS, params=params)
