"""Rendering the staged tensor-core template, templates/conv3d_fwd_mma_staged.cu.j2: an implicit
GEMM for convolutions with many input channels, NCDHW, on mma.sync (sm_80 and newer), float32
accumulation: bfloat16 or float16 on m16n8k16 (a multiple of 16 input channels per group), and
float32 with precision 'tf32' on m16n8k8 .tf32 (a multiple of 8); the K step is the MMA's k.

The other tensor-core template (render_mma.py) puts the taps on K and gathers A per element from
global memory: right for 3 input channels, gather-bound for many. Here a block stages the input
its tile reads in shared memory once per depth plane and input-channel chunk, and every MMA
operand comes from shared memory through ldmatrix.

The GEMM ("kw folded into N"):

  M = staged input positions: TH output rows x RWP staged columns along w (RWP = the columns the
      tile's TW outputs read, rounded up to a multiple of 8).
  N = (output channel, kw) pairs: BCO channels of the block x KW taps, padded to a multiple of 8.
  K = input channels, looped per (kd, kh) tap: a chunk of CK channels of one input depth plane
      per stage (kd and the chunk in a run-time loop), kh and the K steps (16 channels, 8 for
      tf32) unrolled.

  acc[(orow, j)][(co, kw)] = sum over kd, kh, ci of x[ci][id(kd)][orow * SH + kh * DH][j] * w[co][ci][kd][kh][kw]

  and output (orow, ow) of channel co is the sum over kw of acc[(orow, ow * SW + kw * DW + E)][(co, kw)]:
  an epilogue through shared memory adds the KW partial sums of shifted positions. Stride and
  dilation along w cost nothing in the main loop; along h they only move which staged rows A reads.

Why kw goes to N rather than into the K loop: the case this template exists for is the gradient
of the input of the seed workloads, a forward convolution of grad_out (64 channels) to 3 output
channels. With the taps on K and N = the 3 channels padded to 8, each A fragment (512 bytes of
shared memory) feeds one MMA of which 3/8 is useful: about 0.75 bytes of shared memory read per
useful multiply-add, so shared memory, not the tensor cores, sets the pace. With kw on N, a
fragment feeds NT MMAs (3 for 3 x 7 = 21 -> 24 columns, 88% useful), and with the row reuse below
a warp reads about 0.065 bytes per useful multiply-add on seed-a's gradient. With 64 output
channels ('wide'), blocks of 16 channels give N = 48 columns.

The input is staged as NCDHW holds it ([channel][row][column]), not as [position][channel]: the
copy needs no transpose (4-byte cp.async straight from global memory, no registers), and with kw
on N the 8 positions of each half of an A fragment are 8 consecutive staged columns of one row,
16 aligned bytes per channel, which ldmatrix.trans reads into the fragment. (With the taps on K
the positions would shift by kw and lose that alignment; that is what [position][channel] and a
transpose on the way in would have been for.)

tf32 (float32 with precision 'tf32'): the same GEMM and layouts with 4-byte elements (sizes below
in elements: halves for 16-bit, floats for tf32) and K steps of 8 channels. A is staged as float32
by cp.async of one element (no column pairs: E = 0); a lane reads its A fragment with two 32-bit
ld.shared per half, (channel t, position g) and (channel t + 4, position g), and rounds each to
tf32 (cvt.rna) before the MMA. B is rounded to tf32 when staged and read by the same ldmatrix as
16-bit B: on 32-bit data, matrix row n, 32-bit column t is exactly m16n8k8's b0 = (k t, n g).

Layouts in shared memory (bytes; everything 16-byte aligned):

  B  [kd][kh][n][ci], n = co * KW + kw, rows of CIG + 8 halves (CIG + 4 floats): an odd number of
     16-byte units, so the 8 rows an ldmatrix reads fall in distinct banks. All of the block's
     weights, loaded once per block (the grid is persistent).
  A  BUFFERS stage buffers, each [ci of the chunk][staged row][staged column], CH_PITCH elements per
     channel (CH_PITCH = 8 mod 32: the 8 channel rows an ldmatrix.trans reads fall in distinct
     banks; for tf32, the 4 x 8 floats a 32-bit load of the warp reads). Staged column 0 is input
     column ow0 * SW - PW - E, E = PW mod 2 for 16-bit elements, so that a pair of columns is one
     aligned 4-byte word: the stage is copied with cp.async of 4 bytes (zero-fill outside the
     input), where w is even; otherwise with 2-byte loads and 4-byte stores.
  C  the epilogue's partial sums, float, [n][m], aliasing the stage buffer just consumed; in
     passes of EC output channels where all of them do not fit.

A warp owns one run of 8 staged columns and 2 * MT consecutive output rows: m16 tile i is
rows 2i (M rows 0-7) and 2i + 1 (M rows 8-15) of that run. A "half" (8 positions x 16 channels)
of staged row r is one ldmatrix.x2.trans; tile i at tap kh is the halves of staged rows
2i * SH + kh * DH and (2i + 1) * SH + kh * DH, so a warp loads each distinct staged row once per
K step (2 * MT + KH - 1 halves for MT * KH fragments at stride 1) and reuses it across kh.

The pipeline: stage s + BUFFERS - 1 is copied (cp.async) while stage s is computed; one barrier
per stage; the copies run on across tiles, so the next tile's first stages load during the
epilogue. Stages whose input plane lies in the padding are neither copied nor computed.

Tile sizes are MmaStagedTiles; `mma_staged_candidates` is the autotuning space.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from .render import (DIRECT_ARGS, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM, Source, _environment,
                     serving_tiles, templates_dir)
from .spec import ConvSpec

STAGED_TEMPLATE = "conv3d_fwd_mma_staged.cu.j2"

MAX_THREADS = 1024
MAX_ACCUMULATORS = 96      # MT x NT x 4 floats per thread
MAX_HALVES = 16            # staged rows a warp holds at once (2 registers each; each is loaded at its first kh)
MAX_N_COLUMNS = 64         # BCO x KW rounded up to 8: at most 8 n8 tiles per warp
MAX_M_WASTE = 3.0          # M rows computed per output: RWP / TW (stride along w wastes columns)
MAX_CANDIDATES = 6
# Registers a thread needs besides accumulators and operands (addresses, loop state). ptxas on
# sm_90: 92 registers in all for mt=4 with 3 n8 tiles (seed-a's dgrad), 145 for mt=4 with 6
# ('wide'), against estimates of 94 and 148.
OTHER_REGISTERS = 20
# tf32 needs more: ptxas (sm_90) loads the B fragments of later kh taps ahead, more of them the more
# n8 tiles and taps there are: 76 and 112 registers for dgrad-a's mt=2 and mt=4 (3 n8 tiles, 5 taps;
# 62 and 94 estimated without this term), 78 for dgrad-b's mt=4 (2, 3; 76), 120 and 163 for
# wide's mt=2 and mt=4 (6, 3; 92 and 148). The term: TF32_REGISTERS + n8 tiles x (kh - 1).
TF32_REGISTERS = 8


@dataclass(frozen=True)
class MmaStagedTiles:
    """Tile sizes of the staged tensor-core template (the autotuner's search space)."""

    template: ClassVar[str] = STAGED_TEMPLATE

    th: int                 # output rows (along h) per tile, a multiple of 2 * mt
    tw: int                 # output columns (along w) per tile, even
    mt: int                 # m16 tiles per warp: 2 * mt output rows of one run of 8 columns
    block_co: int           # output channels per block (N = block_co * kw columns, padded to 8)
    ck: int                 # input channels per stage: 16, 32 or 64 (tf32: also 8)
    buffers: int = 2        # stage buffers in the cp.async pipeline (stages in flight + 1)
    blocks_per_sm: int = 1  # promised to ptxas (__launch_bounds__): caps registers per thread

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        allowed = ck_options(spec)
        if self.ck not in allowed or spec.in_per_group % self.ck:
            return (f"ck={self.ck} is not {', '.join(map(str, allowed[:-1]))} or {allowed[-1]} dividing the "
                    f"{spec.in_per_group} input channels per group")
        if self.tw < 2 or self.tw % 2:
            return f"tw={self.tw} is not a positive even number"
        if self.mt < 1 or self.th < 2 or self.th % (2 * self.mt):
            return f"th={self.th} is not a multiple of 2 * mt = {2 * self.mt}"
        if not 1 <= self.block_co <= spec.out_per_group:
            return f"block_co={self.block_co} is not between 1 and the {spec.out_per_group} output channels per group"
        if self.buffers not in (2, 3):
            return f"buffers={self.buffers} is not 2 or 3"
        if self.blocks_per_sm < 1:
            return f"blocks_per_sm={self.blocks_per_sm} is not positive"
        g = geometry(spec, self)
        if g.np > MAX_N_COLUMNS:
            return (f"block_co={self.block_co} x kw={spec.kernel_size[2]} = {g.n_columns} columns exceed the "
                    f"{MAX_N_COLUMNS} of one warp")
        if g.threads > MAX_THREADS:
            return f"{g.warps} warps ({g.runs} runs of 8 columns x {self.th // (2 * self.mt)}) exceed {MAX_THREADS // 32}"
        if g.rwp > MAX_M_WASTE * self.tw:
            return f"{g.rwp} staged columns for {self.tw} outputs: more than {MAX_M_WASTE}x the MMA rows that count"
        if self.mt * g.nt * 4 > MAX_ACCUMULATORS:
            return f"mt={self.mt} x {g.nt} n8 tiles x 4 = {self.mt * g.nt * 4} accumulators exceed {MAX_ACCUMULATORS}"
        if g.live_halves > MAX_HALVES:
            return f"{g.live_halves} staged rows held at once per K step exceed {MAX_HALVES}"
        if g.registers_needed > self.max_registers(spec):
            return (f"about {g.registers_needed} registers a thread needed, {self.max_registers(spec)} left by "
                    f"{self.blocks_per_sm} blocks of {g.threads} threads per SM")
        if g.ec < 1:
            return (f"the epilogue's partial sums of one channel ({spec.kernel_size[2]} x {g.c_pitch} floats) "
                    f"exceed a stage buffer ({g.stage_bytes} bytes)")
        if g.smem > shared_budget(self.blocks_per_sm):
            return (f"{g.smem} bytes of shared memory per block (weights {g.b_bytes}, {self.buffers} stages of "
                    f"{g.stage_bytes}) exceed the {shared_budget(self.blocks_per_sm)} that "
                    f"{self.blocks_per_sm} blocks per SM leave")
        return None

    def max_registers(self, spec: ConvSpec) -> int:
        """What ptxas allows a thread under __launch_bounds__(threads, blocks_per_sm): each quarter
        of an SM has a quarter of the registers and the warps it holds."""
        warps = geometry(spec, self).warps * self.blocks_per_sm
        return min(255, REGISTERS_PER_SM // 4 // (32 * -(-warps // 4)) // 8 * 8)

    def __str__(self) -> str:
        return (f"staged th={self.th} tw={self.tw} mt={self.mt} block_co={self.block_co} ck={self.ck} "
                f"buffers={self.buffers} blocks_per_sm={self.blocks_per_sm}")


def is_tf32(spec: ConvSpec) -> bool:
    """float32 with precision 'tf32', multiplied on m16n8k8 (the other specs served are 16-bit, on
    m16n8k16)."""
    return spec.dtype == "float32" and spec.precision == "tf32"


def k_step(spec: ConvSpec) -> int:
    """Input channels per MMA: m16n8k8 for tf32, m16n8k16 for 16-bit types."""
    return 8 if is_tf32(spec) else 16


def ck_options(spec: ConvSpec) -> tuple[int, ...]:
    """Input channels per stage the template unrolls: whole K steps, at most 64."""
    return (8, 16, 32, 64) if is_tf32(spec) else (16, 32, 64)


def shared_budget(blocks_per_sm: int) -> int:
    return min(SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM // blocks_per_sm - 1024)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Geometry:
    """What the template unrolls and allocates for one spec and tile choice (sizes in elements
    unless named bytes)."""

    es: int             # bytes per element of x, weight and the staged A and B: 2, or 4 for tf32
    k_step: int         # input channels per MMA: 16, or 8 for tf32
    e: int              # staged columns before the one the tile's first output reads first (PW mod 2; 0 for tf32)
    rw: int             # staged columns the tile's outputs read
    rwp: int            # staged columns per row and M columns of a tile row: rw rounded up to 8
    runs: int           # rwp / 8: runs of 8 columns, one per warp of a row group
    rh: int             # staged input rows
    ch_pitch: int       # elements per staged channel: rh * rwp or more, 8 mod 32
    warps: int
    m: int              # M rows of a tile: th * rwp
    n_columns: int      # block_co * kw
    np: int             # N: n_columns rounded up to 8
    nt: int             # n8 tiles
    n_blocks: int       # blocks along N per group
    chunks: int         # input-channel chunks per group: cig / ck
    b_pitch: int        # elements per weight row: cig + 8 halves or cig + 4 floats (an odd number of 16 bytes)
    b_bytes: int
    stage_bytes: int
    c_pitch: int        # floats per row of the epilogue's partial sums: m or more, 4 mod 16
    ec: int             # output channels per epilogue pass (at most block_co)
    passes: int
    halves: tuple[int, ...]  # staged rows (from the warp's first, o0 * SH) a warp reads per K step
    live_halves: int    # the most of them a warp holds at once (from a row's first kh to its last)
    smem: int
    registers_needed: int

    @property
    def threads(self) -> int:
        return 32 * self.warps


@functools.lru_cache(maxsize=4096)
def geometry(spec: ConvSpec, tiles: MmaStagedTiles) -> Geometry:
    kd_, kh_, kw_ = spec.kernel_size
    _, sh, sw = spec.stride
    _, dh, dw = spec.dilation
    es, step = spec.torch_dtype.itemsize, k_step(spec)
    e = spec.pad_before[2] % 2 if es == 2 else 0
    rw = e + (tiles.tw - 1) * sw + (kw_ - 1) * dw + 1
    rwp = _round_up(rw, 8)
    runs = rwp // 8
    rh = (tiles.th - 1) * sh + (kh_ - 1) * dh + 1
    ch_pitch = rh * rwp + (8 - rh * rwp) % 32
    warps = runs * max(tiles.th // (2 * max(tiles.mt, 1)), 1)
    m = tiles.th * rwp
    n_columns = tiles.block_co * kw_
    np_ = _round_up(n_columns, 8)
    nt = np_ // 8
    b_pitch = spec.in_per_group + 16 // es
    b_bytes = _round_up(kd_ * kh_ * np_ * b_pitch * es, 128)
    stage_bytes = _round_up(tiles.ck * ch_pitch * es, 128)
    c_pitch = m + (4 - m) % 16
    ec = min(tiles.block_co, stage_bytes // (kw_ * c_pitch * 4))
    passes = -(-tiles.block_co // ec) if ec > 0 else 0
    halves = tuple(sorted({r * sh + kh * dh for r in range(2 * tiles.mt) for kh in range(kh_)}))
    uses = {row: [kh for kh in range(kh_) for r in range(2 * tiles.mt) if r * sh + kh * dh == row] for row in halves}
    live = max(sum(1 for k in uses.values() if min(k) <= kh <= max(k)) for kh in range(kh_))
    registers = tiles.mt * nt * 4 + 2 * live + 2 * nt + 4 + OTHER_REGISTERS
    if es == 4:
        registers += TF32_REGISTERS + nt * (kh_ - 1)
    return Geometry(es=es, k_step=step, e=e, rw=rw, rwp=rwp, runs=runs, rh=rh, ch_pitch=ch_pitch, warps=warps, m=m,
                    n_columns=n_columns, np=np_, nt=nt, n_blocks=-(-spec.out_per_group // tiles.block_co),
                    chunks=spec.in_per_group // tiles.ck if tiles.ck else 0, b_pitch=b_pitch, b_bytes=b_bytes,
                    stage_bytes=stage_bytes, c_pitch=c_pitch, ec=ec, passes=passes, halves=halves,
                    live_halves=live, smem=b_bytes + tiles.buffers * stage_bytes, registers_needed=registers)


def supports_mma_staged(spec: ConvSpec) -> str | None:
    """None if the staged tensor-core template serves `spec`; otherwise the reason it does not."""
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the staged tensor-core template reads contiguous NCDHW only"
    if spec.dtype == "float32" and spec.precision != "tf32":
        return (f"float32 with precision {spec.precision!r}: the staged tensor-core template multiplies "
                "tf32 (precision='tf32'), bfloat16 or float16; float32's accuracy ('ieee') is not written")
    if spec.dtype not in ("bfloat16", "float16", "float32"):
        return f"{spec.dtype}: the staged tensor-core template multiplies tf32, bfloat16 or float16"
    if spec.in_per_group % k_step(spec):
        return (f"{spec.in_per_group} input channels per group: the staged tensor-core template needs a "
                f"multiple of {k_step(spec)} (a K step{' of tf32' if is_tf32(spec) else ''})")
    if spec.kernel_size[2] > MAX_N_COLUMNS:
        return f"kernel width {spec.kernel_size[2]} exceeds the {MAX_N_COLUMNS} N columns of one warp"
    if not mma_staged_candidates(spec):
        tiles = default_mma_staged_tiles(spec)
        return f"no tile choice fits, e.g. {tiles}: {tiles.problem(spec)}"
    return None


def _block_co_options(spec: ConvSpec) -> list[int]:
    """Output channels per block, the two best: those with the fewest padded N columns per useful
    one over all of the group's blocks (ties: the larger block, which stages the input fewer times)."""
    kw_, cog = spec.kernel_size[2], spec.out_per_group
    options = [c for c in range(1, cog + 1) if _round_up(c * kw_, 8) <= MAX_N_COLUMNS]
    if not options:
        return [1]

    def waste(c: int) -> float:  # padded N columns per useful one, over all blocks of the group
        return -(-cog // c) * _round_up(c * kw_, 8) / (cog * kw_)
    return sorted(options, key=lambda c: (round(waste(c), 3), -c))[:2]


def estimate_cycles(spec: ConvSpec, tiles: MmaStagedTiles) -> float:
    """A rough cost per output position (all channels), in SM cycles, for ordering candidates only:
    the largest of tensor-core time (an m16n8k16, or an m16n8k8 .tf32 at half the rate per
    multiply-add, per ~6 cycles per SM quarter), shared-memory wavefronts (128 bytes a cycle) and
    L2-to-SM bytes (~24 a cycle), slowed where few warps share an SM. The autotuner measures;
    this only decides which few it measures."""
    g = geometry(spec, tiles)
    kd_, kh_, _ = spec.kernel_size
    outputs = tiles.th * tiles.tw
    stages = kd_ * g.chunks
    mma = g.m / 16 * kd_ * kh_ * (spec.in_per_group // g.k_step) * g.nt * g.n_blocks / outputs
    b_wavefronts = (g.nt // 2) * 4 + (g.nt % 2) * 2
    # Per K step, a half is 2 wavefronts either way: one ldmatrix.x2.trans (16-bit) or two 32-bit
    # loads (tf32); so per channel, tf32 reads twice the bytes of A and B.
    per_stage_warp = tiles.ck // g.k_step * (2 * len(g.halves) + kh_ * b_wavefronts)
    staging = tiles.ck * g.rh * g.rwp * g.es / 128
    epilogue = (g.m * g.n_columns + outputs * g.n_columns) * 4 / 128
    wavefronts = (stages * (g.warps * per_stage_warp + staging) + epilogue) * g.n_blocks / outputs
    l2 = stages * tiles.ck * g.rh * g.rwp * g.es * g.n_blocks / outputs / 24
    by_registers = REGISTERS_PER_SM // (g.threads * _round_up(g.registers_needed, 8))
    resident = max(1, min(SHARED_BYTES_PER_SM // (g.smem + 1024), by_registers))
    warps_per_sm = resident * g.warps
    return max(mma * 6 / 4, wavefronts, l2) * max(1.0, 12 / warps_per_sm) ** 0.5


def _fitting(spec: ConvSpec, th: int, tw: int, mt: int, block_co: int, ck: int, buffers: int) -> MmaStagedTiles | None:
    """The tile choice with the most blocks per SM (up to 2) that fits, or None."""
    for blocks in (2, 1):
        tiles = MmaStagedTiles(th, tw, mt, block_co, ck, buffers, blocks)
        if tiles.problem(spec) is None:
            return tiles
    return None


def mma_staged_candidates(spec: ConvSpec) -> list[MmaStagedTiles]:
    """The autotuning space, at most MAX_CANDIDATES: tiles 64 and 32 outputs wide (the input
    shape is not known here; the autotuner times each on it), each with the tile heights, rows
    per warp, channels per stage and pipeline depths the cost model ranks best."""
    return list(_candidates(spec))


@functools.lru_cache(maxsize=256)
def _candidates(spec: ConvSpec) -> tuple[MmaStagedTiles, ...]:
    served = spec.dtype in ("bfloat16", "float16") or is_tf32(spec)
    if spec.layout != "ncdhw" or not served or spec.in_per_group % k_step(spec):
        return ()
    found: dict[int, list[tuple[float, MmaStagedTiles]]] = {}
    for tw in (64, 32):
        for block_co in _block_co_options(spec):
            for mt in (8, 4, 2):
                for th in (2 * mt, 4 * mt):
                    for ck in ck_options(spec):
                        for buffers in (2, 3):
                            if spec.in_per_group % ck:
                                continue
                            tiles = _fitting(spec, th, tw, mt, block_co, ck, buffers)
                            if tiles is not None:
                                found.setdefault(tw, []).append((estimate_cycles(spec, tiles), tiles))
    picked: list[MmaStagedTiles] = []
    per_width = -(-MAX_CANDIDATES // 2)
    for tw in (64, 32):
        ranked = [t for _, t in sorted(found.get(tw, []), key=lambda o: o[0])]
        # The best, then the best of another shape (th, mt), then of another pipeline (ck, buffers):
        # the cost model orders similar choices poorly, so the timed few should differ.
        mine: list[MmaStagedTiles] = ranked[:1]
        for key in (lambda t: (t.th, t.mt), lambda t: (t.th, t.mt, t.ck, t.buffers, t.blocks_per_sm)):
            for t in ranked:
                if len(mine) < per_width and all(key(t) != key(p) for p in mine):
                    mine.append(t)
                    break
        mine += [t for t in ranked if t not in mine][:per_width - len(mine)]
        picked += mine
    return tuple(sorted(picked, key=lambda t: estimate_cycles(spec, t))[:MAX_CANDIDATES])


def default_mma_staged_tiles(spec: ConvSpec) -> MmaStagedTiles:
    """The cost model's best tile choice, or (where none fits) a small one for the reason."""
    found = mma_staged_candidates(spec)
    if found:
        return found[0]
    return MmaStagedTiles(th=4, tw=32, mt=2, block_co=min(spec.out_per_group, 8), ck=k_step(spec))


def _pass_tiles(g: Geometry, kw_: int, block_co: int) -> list[tuple[int, int, int, list[int]]]:
    """Per epilogue pass: (first channel, channels, first N column, n8 tiles holding its columns)."""
    passes = []
    for p in range(g.passes):
        first = p * g.ec
        count = min(g.ec, block_co - first)
        lo, hi = first * kw_, (first + count) * kw_
        passes.append((first, count, lo, list(range(lo // 8, (hi - 1) // 8 + 1))))
    return passes


def render_mma_staged(spec: ConvSpec, tiles: MmaStagedTiles | None = None, wide: bool = False,
                      emulate: bool = False) -> Source:
    """The staged tensor-core template for `spec`; `wide` selects 64-bit offsets (see
    render.WIDE_INDEX_ELEMENTS). `emulate` renders the source for the CPU emulator of the unit
    tests (tests/unit/cuda_emulator.h) instead of nvcc."""
    tiles = serving_tiles(spec, tiles, "staged tensor-core template", supports_mma_staged(spec),
                          default_mma_staged_tiles)
    g = geometry(spec, tiles)
    _, kh_, kw_ = spec.kernel_size
    _, sh, _ = spec.stride
    _, dh, _ = spec.dilation
    # Per m16 tile i and tap kh: the indices (into g.halves) of its top and bottom staged rows.
    fragments = [[(g.halves.index(2 * i * sh + kh * dh), g.halves.index((2 * i + 1) * sh + kh * dh))
                  for kh in range(kh_)] for i in range(tiles.mt)]
    # Per kh: the halves it is the first to read (each is loaded there, once per K step).
    first_use, seen = [], set()
    for kh in range(kh_):
        new = sorted({index for i in range(tiles.mt) for index in fragments[i][kh]} - seen)
        first_use.append(new)
        seen.update(new)
    name = f"conv3d_fwd_mma_staged_{spec.tag}" + ("_i64" if wide else "")
    body = _environment(templates_dir()).get_template(STAGED_TEMPLATE).render(
        spec=spec, tiles=tiles, g=g, fragments=fragments, first_use=first_use, passes=_pass_tiles(g, kw_, tiles.block_co),
        name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS, wide=wide, emulate=emulate, tf32=is_tf32(spec))
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "mma": ("m16n8k8 tf32 (float32 rounded to nearest), float32 accumulate" if is_tf32(spec)
                else f"m16n8k16 {spec.dtype}, float32 accumulate"),
        "gemm": (f"M = {tiles.th} rows x {g.rwp} staged columns, N = {tiles.block_co} channels x {kw_} kw = "
                 f"{g.n_columns} -> {g.np}, K = {spec.in_per_group} input channels per (kd, kh)"),
        "warps": f"{g.warps}: {g.runs} runs of 8 columns x {tiles.th // (2 * tiles.mt)} of {2 * tiles.mt} rows",
        "stages": (f"{spec.kernel_size[0] * g.chunks} per tile (kd x {g.chunks} chunks of {tiles.ck} channels), "
                   f"{g.rh} x {g.rwp} staged positions, {tiles.buffers} buffers"),
        "epilogue": f"{g.passes} pass{'es' if g.passes > 1 else ''} of {g.ec} channel{'s' if g.ec > 1 else ''}",
        "shared": f"{g.smem} bytes per block (weights {g.b_bytes}, stages {tiles.buffers} x {g.stage_bytes})",
        "offsets": "64-bit" if wide else "32-bit",
    }
    return Source(name=name, template=STAGED_TEMPLATE, body=body, identity=spec.canonical_json(),
                  arg_names=DIRECT_ARGS, params=params)
