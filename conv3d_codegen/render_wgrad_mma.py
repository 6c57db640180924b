"""Rendering the tensor-core wgrad template, templates/conv3d_wgrad_mma.cu.j2 (sm_80 and newer).

The gradient of the weight is a GEMM per group, reduced over every output position:

  M = the group's output channels (co), N = its input columns (ci, kd, kh, kw), K = the output
  positions (n, od, oh, ow);  A[co][k] = grad_out at position k,  B[k][(ci, kd, kh, kw)] = the
  input that position's tap (kd, kh, kw) reads in channel ci.

mma.sync m16n8k16 (bfloat16/float16) or m16n8k8 (float32 with precision 'tf32'), float32
accumulators. float32 with precision 'ieee' runs as 3xTF32 (as the forward template does): every
staged element is split once into big = tf32(v) and small = tf32(v - big), both parts staged, and
each product taken as three MMAs (small x big, big x small, big x big). The tensor cores round
each MMA's sum toward zero, an error that grows with the number of MMAs into one accumulator
(bench/NOTES.md, 3xTF32), so an item's products are summed apart and added to the block's
accumulators after each item (24 MMAs a sum at 64 positions an item), in float32 adds.

A work item is one output row (n, od, oh) and OWC positions along w; a block stages its items
in shared memory, two buffers deep (the next item is loaded into registers while the MMAs of
this one run, then written to the other buffer: one barrier per item), and keeps its M x N
accumulators in registers across all its items.

- A: grad_out rows as [co][position] (positions past ow and channels past the group are zeros,
  so they add nothing), read with ldmatrix: a 16-byte row is 8 (tf32: 4) positions of one
  channel. Rows are padded to an odd number of 16 bytes, so ldmatrix's 8 rows hit distinct banks.
- B: an n8 tile is one input row (ci, kd, kh) and 8 taps along w (kw > 8: blocks of 8, zeros
  past kw; kw <= 4: two rows of 4 taps). Lane (g, t) of a warp holds column g, positions
  2t, 2t+1 (+8): a pair of adjacent positions j, j+1 of one input row, that is the elements
  (ow0 + j) * sw + kw * dw and the same plus sw. Each staged row is kept per phase (element
  index mod sw), so the pair is two adjacent elements of one phase, e = j + kw*dw // sw of phase
  kw*dw % sw; and per phase twice, the second copy one element to the left, so that the pair is
  one aligned 32-bit load whatever the parity of e (known when rendering, per kw; j is even).
  Stride along w is served this way too (the phases); tf32 elements are 32 bits, one copy.
- The bias gradient is the sum of grad_out per channel: one more staged row, of ones, whose
  column kw=0 accumulates exactly that.
- Warps split N (WARPS_N x NT tiles) and M (WARPS_M x MT tiles); blocks split groups, M and N
  (blockIdx.y) and the reduction over the items (blockIdx.x, `splits` of them). Each block
  writes its partial sums to the workspace and the second kernel adds the splits in a fixed
  order, as in the direct wgrad template, so the result is the same on every run.

Staging an item: each thread loads its share into registers, A as 32-bit pairs where ow is even
(else two 16-bit loads), B as cells (word i of every copy of one phase: elements 2i, 2i+1, 2i+2,
whose loads are predicated on the input's bounds: padding reads as zeros). A warp stages whole
input rows, its lanes keeping their cells from row to row (constant shared-memory offsets); the
rows' last cells (a row has SW x seg_words of them, seldom a multiple of 32) are spread over all
threads. Where each staged row lies from an item's first element (its channel, kd*dd and kh*dh as
one offset) comes from a table set once per block; rows past the group's (the ones, the zeros of
a block's unused tiles) are the same for every item and are staged once. A block's items are
every splits-th; the next one's coordinates come from adding `splits` in the items' mixed radix.

Why this shape: per K step a warp loads MT A fragments (ldmatrix.x4: 4 shared-memory wavefronts
each) and NT B fragments (two 32-bit loads: 2 wavefronts) for MT x NT MMAs, so each warp holds
all of a block's 64 channels (MT = 4) and 4 to 8 tiles of N: 28 wavefronts per 24 MMAs at
MT x NT = 4 x 6, under one wavefront a clock against about 0.6 MMAs a clock on an H100. seed-a
(45 rows + bias = 46 tiles) runs 8 warps of 6 tiles in one block per SM (about 200 registers);
seed-b (kw = 3: two rows a tile, 14 tiles) smaller blocks, two or three per SM. Staging an
item costs more instructions than its MMAs: the layout above took it from ~640 to ~360 a warp
per item on seed-b (session 7, bench/NOTES.md), against ~117 for the K loop; several output
rows per item sharing their input rows would cut it further.

Tile sizes are WgradMmaTiles; `wgrad_mma_candidates` is the autotuning space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .render import (REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM, Source, _environment, serving_tiles,
                     templates_dir)
from .render_grad import WGRAD_ARGS
from .spec import ConvSpec

WGRAD_MMA_TEMPLATE = "conv3d_wgrad_mma.cu.j2"

MAX_ACCUMULATORS = 128        # floats per thread: MT x NT x 4
# tf32 stages twice the bytes of A a thread: with 128 accumulators it spilled (ptxas, sm_90, CUDA 13:
# seed-a, 6 warps of 4 x 8 tiles, 255 registers and 16 bytes spilled).
MAX_TF32_ACCUMULATORS = 96
# 3xTF32 holds an item's sums next to the block's (twice the accumulators) and A in two parts.
MAX_X3_ACCUMULATORS = 48
MAX_PREFETCH_REGISTERS = 40   # the next item's elements a thread holds while this one is computed
MAX_THREADS = 512
MAX_THREADS_PER_SM = 1536     # sm_86 and sm_89 (sm_80 and sm_90: 2048)
MAX_OWC = 128
# Registers a thread needs besides accumulators, prefetch and A fragments: B fragments,
# addresses, loop state (ptxas: 45 to 61 on the seeds' candidates, CUDA 13).
OTHER_REGISTERS = 48
MAX_CANDIDATES = 6


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class WgradMmaTiles:
    """Tile sizes of the tensor-core wgrad template."""

    template: ClassVar[str] = WGRAD_MMA_TEMPLATE

    warps_n: int            # warps along N (columns: input rows x taps along w)
    nt: int                 # n8 tiles per warp
    owc: int = 64           # output positions along w per work item, a multiple of 16
    warps_m: int = 1        # warps along M (output channels)
    mt: int = 4             # m16 tiles per warp: 16 output channels each
    blocks_per_sm: int = 1  # promised to ptxas (__launch_bounds__), and what the splits fill

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    def split_blocks(self, spec: ConvSpec) -> int:
        """Blocks one split of the reduction takes: groups x blocks along M x blocks along N."""
        plan = _plan(spec, self)
        return spec.groups * plan.m_blocks * plan.n_blocks

    def min_splits(self, spec: ConvSpec, rows: int) -> int:
        """The fewest splits of `rows` grad_out rows the kernel takes: any."""
        return 1

    def max_registers(self) -> int:
        return min(255, REGISTERS_PER_SM // (self.threads * self.blocks_per_sm) // 8 * 8)

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.warps_m < 1 or self.warps_n < 1 or self.threads > MAX_THREADS:
            return f"{self.warps_m}x{self.warps_n} warps is not 1 to {MAX_THREADS // 32} warps"
        if self.owc % 16 or not 16 <= self.owc <= MAX_OWC:
            return f"owc={self.owc} is not a multiple of 16 from 16 to {MAX_OWC}"
        if not 1 <= self.mt <= 4 or self.nt < 1:
            return f"mt={self.mt} is not 1 to 4 m16 tiles, or nt={self.nt} is not positive"
        if 4 * self.mt * self.nt > (most := _max_accumulators(spec)):
            return f"mt x nt = {self.mt} x {self.nt} needs over {most} accumulators a thread"
        if 16 * self.mt * self.warps_m > _round_up(spec.out_per_group, 16):
            return (f"{16 * self.mt * self.warps_m} channels per block exceed the {spec.out_per_group} "
                    f"output channels per group")
        plan = _plan(spec, self)
        if self.nt % plan.blocks:
            return f"nt={self.nt} is not a multiple of the {plan.blocks} n8 tiles of an input row"
        if self.blocks_per_sm < 1 or plan.smem + 1024 > SHARED_BYTES_PER_SM // self.blocks_per_sm \
                or plan.smem > SHARED_BYTES_PER_BLOCK:
            return (f"{plan.smem} bytes of shared memory per block do not fit {self.blocks_per_sm} "
                    f"blocks per SM (at most {SHARED_BYTES_PER_BLOCK} a block)")
        if plan.prefetch_registers > MAX_PREFETCH_REGISTERS:
            return (f"prefetching holds {plan.prefetch_registers} registers per thread, "
                    f"over {MAX_PREFETCH_REGISTERS}")
        if (need := self.registers(spec)) > self.max_registers():
            return (f"about {need} registers a thread exceed the {self.max_registers()} that "
                    f"{self.blocks_per_sm} blocks of {self.threads} threads per SM leave")
        return None

    def registers(self, spec: ConvSpec) -> int:
        """A rough count of the registers a thread needs: accumulators, the next item's
        elements, fragments and the rest."""
        parts = 2 if _x3(spec) else 1  # 3xTF32: an item's sums and A's small parts as well
        return parts * (4 * self.mt * self.nt + 4 * self.mt) + _plan(spec, self).prefetch_registers + OTHER_REGISTERS

    def __str__(self) -> str:
        return (f"mma warps_n={self.warps_n} nt={self.nt} owc={self.owc} warps_m={self.warps_m} "
                f"mt={self.mt} blocks_per_sm={self.blocks_per_sm}")


@dataclass(frozen=True)
class WgradMmaPlan:
    """What the template needs beyond the tiles: the shape of N and the shared memory layout,
    in 32-bit words unless named bytes."""

    sixteen: bool        # bfloat16/float16 (m16n8k16); else tf32 (m16n8k8)
    x3: bool             # float32 'ieee': 3xTF32, the small parts staged small_bytes after the big ones
    span: int            # taps along w per n8 tile row: 4 (two rows per tile) or 8
    blocks: int          # n8 tiles per input row (span 8; kw > 8 takes more than one)
    rows: int            # input rows (ci, kd, kh) per group
    tiles: int           # n8 tiles per group, the bias's row of ones included
    m_blocks: int        # blocks along M per group
    n_blocks: int        # blocks along N per group
    staged_rows: int     # input rows a block stages per item
    e_max: int           # the largest kw * dw // sw over the tile's taps (padding taps included)
    copies: int          # 2: each phase kept again one element to the left
    seg_words: int       # words of one copy of one phase of a staged row
    seg_pitch: int       # words between copies/phases: 8 mod 32, so a warp's pairs hit distinct banks
    row_pitch: int       # words between staged rows: 16 mod 32
    a_pitch: int         # bytes per staged grad_out channel: an odd multiple of 16 (ldmatrix)
    a_bytes: int
    small_bytes: int     # 3xTF32: from an element's big part to its small part; else 0
    buffer_bytes: int    # A then B (3xTF32: then their small parts); two buffers
    a_slots: int         # A words each thread loads per item
    cells: int           # B cells per item (of the input rows; not the constant rows): one word of each copy
    b_slots: int         # cells each thread loads per item: whole rows per warp, then the rows' remainders
    elements_per_cell: int

    @property
    def table_bytes(self) -> int:
        """Per staged row, where it lies relative to an item: 16 bytes."""
        return 16 * self.staged_rows

    @property
    def smem(self) -> int:
        return 2 * self.buffer_bytes + self.table_bytes

    @property
    def prefetch_registers(self) -> int:
        return self.a_slots + self.b_slots * self.elements_per_cell


def _x3(spec: ConvSpec) -> bool:
    """float32 with precision 'ieee': 3xTF32."""
    return spec.dtype == "float32" and spec.precision != "tf32"


def _max_accumulators(spec: ConvSpec) -> int:
    if spec.dtype != "float32":
        return MAX_ACCUMULATORS
    return MAX_X3_ACCUMULATORS if _x3(spec) else MAX_TF32_ACCUMULATORS


def _span(spec: ConvSpec) -> tuple[int, int]:
    """(span, blocks): taps along w per tile row and n8 tiles per input row."""
    kw = spec.kernel_size[2]
    return (4, 1) if kw <= 4 else (8, -(-kw // 8))


def _plan(spec: ConvSpec, tiles: WgradMmaTiles) -> WgradMmaPlan:
    sixteen = spec.dtype != "float32"
    element = 2 if sixteen else 4
    kd, kh, _ = spec.kernel_size
    sw, dw = spec.stride[2], spec.dilation[2]
    span, blocks = _span(spec)
    rows = spec.in_per_group * kd * kh
    bias = int(spec.bias)
    n_tiles = -(-(rows + bias) // 2) if span == 4 else rows * blocks + bias
    bn = tiles.warps_n * tiles.nt
    staged_rows = 2 * bn if span == 4 else max(1, bn // blocks)
    e_max = max(kw * dw // sw for kw in range(span * blocks))
    copies = 2 if sixteen and any(kw * dw // sw % 2 for kw in range(span * blocks)) else 1
    # Words of a segment: a lane reads word t + (e - c) / 2 + k0 / 2 (+4) for 16-bit pairs,
    # t + e + k0 (+4) for tf32 elements (see the template's b_lane).
    seg_words = tiles.owc // 2 + e_max // 2 if sixteen else tiles.owc + e_max
    seg_pitch = seg_words + (8 - seg_words) % 32
    row_pitch = sw * copies * seg_pitch
    row_pitch += (16 - row_pitch) % 32
    bm = 16 * tiles.mt * tiles.warps_m
    a_pitch = tiles.owc * element + 16
    a_bytes = bm * a_pitch
    parts = _round_up(a_bytes + 4 * staged_rows * row_pitch, 128)
    x3 = _x3(spec)
    buffer_bytes = 2 * parts if x3 else parts
    a_words = bm * tiles.owc * element // 4
    live_rows = min(staged_rows, rows)  # rows past the group's are constant: staged once
    cells = live_rows * sw * seg_words
    # A warp stages the first 32 x `main` cells of whole rows (its lanes keep their cells from row to
    # row); the rows' last `rem` cells are spread over all threads.
    main, rem = divmod(sw * seg_words, 32)
    b_slots = (-(-live_rows // (tiles.threads // 32)) if main else 0) * main + -(-live_rows * rem // tiles.threads)
    return WgradMmaPlan(
        sixteen=sixteen, x3=x3, span=span, blocks=blocks, rows=rows, tiles=n_tiles,
        m_blocks=-(-spec.out_per_group // bm), n_blocks=-(-n_tiles // bn), staged_rows=staged_rows,
        e_max=e_max, copies=copies, seg_words=seg_words, seg_pitch=seg_pitch, row_pitch=row_pitch,
        a_pitch=a_pitch, a_bytes=a_bytes, small_bytes=parts if x3 else 0, buffer_bytes=buffer_bytes,
        a_slots=-(-a_words // tiles.threads), cells=cells, b_slots=b_slots,
        elements_per_cell=copies + 1 if sixteen else 1)


def _fitted_owc(ow: int | None) -> int:
    """Positions per item: the row rounded up to 16, at most 64 (longer rows take several items)."""
    return 64 if ow is None else min(64, _round_up(max(ow, 1), 16))


def _with_blocks_per_sm(spec: ConvSpec, tiles: WgradMmaTiles) -> WgradMmaTiles:
    """The most blocks per SM (up to 4) that the register estimate and shared memory allow; 1 if none."""
    for per_sm in (4, 3, 2):
        fitted = WgradMmaTiles(tiles.warps_n, tiles.nt, tiles.owc, tiles.warps_m, tiles.mt, per_sm)
        if fitted.threads * per_sm <= MAX_THREADS_PER_SM and fitted.problem(spec) is None:
            return fitted
    return WgradMmaTiles(tiles.warps_n, tiles.nt, tiles.owc, tiles.warps_m, tiles.mt, 1)


def wgrad_mma_candidates(spec: ConvSpec, ow: int | None = None) -> list[WgradMmaTiles]:
    """The autotuning space. Every warp holds MT x NT tiles of the block's accumulators; per K
    step it loads MT A fragments (4 shared-memory wavefronts each) and NT B fragments (2 each)
    for MT x NT MMAs, so large warp tiles (all 64 channels: MT = 4; NT = 4 to 8) keep shared
    memory under the tensor cores' rate. They differ in NT (accumulators per thread against
    warps per block), and in a split of the channels over two warps (MT = 2: fewer registers,
    more warps). Each as many blocks per SM as registers and shared memory allow. 3xTF32 holds
    twice the registers per accumulator: at most 48 accumulators (NT = 3 at MT = 4) and 8 warps."""
    plan_of = _span(spec)
    kd, kh, _ = spec.kernel_size
    rows = spec.in_per_group * kd * kh
    span, blocks = plan_of
    n_tiles = -(-(rows + int(spec.bias)) // 2) if span == 4 else rows * blocks + int(spec.bias)
    m_tiles = -(-spec.out_per_group // 16)
    owc = _fitted_owc(ow)
    found = []
    for mt, warps_m in ((min(4, m_tiles), 1), (2, 2)):
        if warps_m > 1 and m_tiles < 4:
            continue
        for nt in (3, 2, 6, 4) if _x3(spec) else (6, 4, 8, 2):
            nt = min(nt, _round_up(n_tiles, blocks))
            nt = _round_up(nt, blocks)
            if _x3(spec):  # about 200 registers a thread: 8 warps fill an SM's registers
                most = 8 // warps_m
            else:  # split channels: at most 12 warps (16 of them, 128 registers each, spilled in tf32)
                most = MAX_THREADS // 32 if warps_m == 1 else 12 // warps_m
            warps_n = max(1, min(most, -(-n_tiles // nt)))
            tiles = _with_blocks_per_sm(spec, WgradMmaTiles(warps_n, nt, owc, warps_m, mt))
            if tiles.problem(spec) is None and tiles not in found:
                found.append(tiles)
    return found[:MAX_CANDIDATES]


def default_wgrad_mma_tiles(spec: ConvSpec, ow: int | None = None) -> WgradMmaTiles | None:
    found = wgrad_mma_candidates(spec, ow)
    return found[0] if found else None


def supports_wgrad_mma(spec: ConvSpec) -> str | None:
    """None if the tensor-core wgrad template serves `spec`; otherwise the reason it does not."""
    if spec.kernel_size[2] * spec.dilation[2] > 64:
        return f"kernel width {spec.kernel_size[2]} x dilation {spec.dilation[2]} is over 64 columns"
    if default_wgrad_mma_tiles(spec) is None:
        probe = WgradMmaTiles(warps_n=4, nt=min(4, 4 * _span(spec)[1]), mt=1)
        return f"no tile choice fits: {probe.problem(spec)}"
    return None


def render_wgrad_mma(spec: ConvSpec, tiles: WgradMmaTiles | None = None, wide: bool = False,
                     emulate: bool = False) -> Source:
    """The tensor-core wgrad template for `spec`; `wide` selects 64-bit offsets. Its entry point
    takes what render_grad.render_wgrad's does: (x, grad_out, grad_bias, grad_weight) and
    WGRAD_ARGS, the workspace holding splits x (weights + out_channels) floats. `emulate` renders
    the source for the CPU emulator of the unit tests (tests/unit/cuda_emulator.h)."""
    tiles = serving_tiles(spec, tiles, "tensor-core wgrad template", supports_wgrad_mma(spec), default_wgrad_mma_tiles)
    plan = _plan(spec, tiles)
    name = f"conv3d_wgrad_mma_{spec.tag}" + ("_i64" if wide else "")
    body = _environment(templates_dir()).get_template(WGRAD_MMA_TEMPLATE).render(
        spec=spec, tiles=tiles, plan=plan, name=name, entry=f"{name}_launch", arg_names=WGRAD_ARGS, wide=wide,
        emulate=emulate)
    mma = (f"m16n8k16 {spec.dtype}" if plan.sixteen else
           "m16n8k8 3xTF32 (float32 split into tf32 parts, three MMAs; an item's sums added apart)" if plan.x3 else
           "m16n8k8 tf32")
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "mma": f"{mma}, float32 accumulate",
        "n": (f"{plan.rows} input rows x {spec.kernel_size[2]} taps{' + bias' if spec.bias else ''} -> "
              f"{plan.tiles} n8 tiles ({plan.span} taps a row), {plan.n_blocks} block(s) along N, "
              f"{plan.m_blocks} along M per group"),
        "staging": (f"{tiles.owc} positions per item; {plan.staged_rows} input rows x {spec.stride[2]} phase(s) x "
                    f"{plan.copies} cop{'ies' if plan.copies > 1 else 'y'}; {plan.smem} bytes of shared memory"),
        "offsets": "64-bit" if wide else "32-bit",
    }
    return Source(name=name, template=WGRAD_MMA_TEMPLATE, body=body, identity=spec.canonical_json(),
                  arg_names=WGRAD_ARGS, params=params)
