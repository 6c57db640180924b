"""Rendering the depthwise forward template, templates/conv3d_fwd_depthwise.cu.j2.

Depthwise (groups == in_channels): every output channel reads one input channel, 27 taps for a
3x3x3 kernel, so the convolution moves far more bytes than it computes and the kernel is built
around the memory traffic:

  A block owns one (n, co), a tile of TH x TW outputs in (h, w) and a slab of DT output planes
  along d. It walks the input planes the slab needs in order; each plane (the tile and its halo,
  ROWS_IN x COLS_IN) is loaded once from global memory into one of two shared-memory slots,
  converted to float, while the plane before it is computed (one barrier per plane). A thread
  owns HT x WT outputs of every plane of the slab and reads its window of each staged plane
  once, with vector loads: every input plane feeds, from registers, the up-to-KD output planes
  that use it (their accumulators are live together). The plane loop is unrolled, so which
  (output plane, kd) pairs a plane feeds, and every offset, are known when rendering. The KVOL
  weights of the channel sit in registers (in shared memory beyond MAX_REGISTER_WEIGHTS); the
  outputs leave as one vector store per thread row where aligned.

Tile sizes are DepthwiseTiles; `depthwise_candidates` is the autotuning space.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .render import DIRECT_ARGS, Source, _environment, serving_tiles, templates_dir
from .spec import ConvSpec

DEPTHWISE_TEMPLATE = "conv3d_fwd_depthwise.cu.j2"

# Per-thread limits that keep the unrolled code compilable in seconds and without spills under
# the 128-register cap (512 threads per SM).
MAX_UNROLLED_FMAS = 8192        # DT * KVOL * HT * WT multiply-adds unrolled per thread
MAX_LIVE_ACCUMULATORS = 64      # accumulators of the output planes a staged input plane feeds
MAX_STAGED_PER_THREAD = 24      # input elements a thread carries from global to shared memory
MAX_REGISTER_WEIGHTS = 32       # up to this many taps the weights stay in registers
# Several output rows per thread use each weight of a plane several times; ptxas then keeps the
# weights read from shared memory in registers: 7x7x7 with ht=2 took 255 registers and spilled
# even at dt=1, 5x5x5 (250) compiled clean.
MAX_ROW_WEIGHT_USES = 256       # ht * KVOL, where ht > 1
MAX_KERNEL_TAPS = 343           # 7x7x7
MAX_SHARED_BYTES = 48 * 1024    # static shared memory per block
BANKS = 32


@dataclass(frozen=True)
class DepthwiseTiles:
    """Tile sizes of the depthwise template (the autotuner's search space)."""

    template: ClassVar[str] = DEPTHWISE_TEMPLATE
    cot: ClassVar[int] = 1  # output channels per thread: a block owns one channel

    ht: int   # outputs per thread along h
    wt: int   # consecutive outputs per thread along w
    th: int   # block tile along h, in outputs (th / ht threads along h)
    tw: int   # block tile along w, in outputs (tw / wt threads along w)
    dt: int   # output planes along d per block, computed in order (the slab)
    ahead: int = 1  # input planes loaded ahead of the one computed (registers hold ahead - 1 more)

    @property
    def threads(self) -> int:
        return (self.th // self.ht) * (self.tw // self.wt)

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if min(self.ht, self.wt, self.th, self.tw, self.dt) < 1:
            return f"tile sizes must be positive: {self}"
        if self.ahead not in (1, 2):
            return f"ahead={self.ahead} is not 1 or 2"
        if self.wt not in (1, 2, 4, 8):
            return f"wt={self.wt} is not 1, 2, 4 or 8 (a thread row leaves as whole vector stores)"
        if self.th % self.ht or self.tw % self.wt:
            return f"ht={self.ht} and wt={self.wt} must divide th={self.th} and tw={self.tw}"
        if self.threads % 32 or not 32 <= self.threads <= 1024:
            return f"(th/ht) x (tw/wt) = {self.threads} threads is not a multiple of 32 between 32 and 1024"
        if self.ht > 1 and self.ht * spec.kernel_volume > MAX_ROW_WEIGHT_USES:
            return (f"ht={self.ht} rows x {spec.kernel_volume} taps exceeds {MAX_ROW_WEIGHT_USES} weight uses "
                    "per plane (one row per thread for kernels this large)")
        g = geometry(spec, self)
        if g.fmas > MAX_UNROLLED_FMAS:
            return (f"dt={self.dt} x {spec.kernel_volume} taps x {self.ht * self.wt} outputs = {g.fmas} unrolled "
                    f"multiply-adds per thread exceeds {MAX_UNROLLED_FMAS}")
        if g.live_accumulators > MAX_LIVE_ACCUMULATORS:
            return f"{g.live_accumulators} live accumulators per thread exceed {MAX_LIVE_ACCUMULATORS}"
        if g.staged * self.ahead > MAX_STAGED_PER_THREAD:
            return (f"a {g.rows_in}x{g.cols_in} input plane over {self.threads} threads, {self.ahead} ahead, is "
                    f"{g.staged * self.ahead} elements per thread, more than {MAX_STAGED_PER_THREAD}")
        if g.shared_bytes > MAX_SHARED_BYTES:
            return f"{g.shared_bytes} bytes of shared memory exceed {MAX_SHARED_BYTES}"
        return None

    def __str__(self) -> str:
        return f"ht={self.ht} wt={self.wt} th={self.th} tw={self.tw} dt={self.dt} ahead={self.ahead}"


@dataclass(frozen=True)
class Geometry:
    """What the template unrolls for one spec and tile choice."""

    rows_in: int          # input rows of a staged plane (the block tile plus its halo)
    cols_in: int          # input columns of a staged plane
    thread_rows: int      # input rows of one thread's window
    thread_cols: int      # input columns of one thread's window
    vector: int           # floats per shared-memory read (4, 2 or 1)
    reads: int            # vector reads per window row
    pitch: int            # floats per staged row, chosen for the fewest bank conflicts
    slot: int             # floats per staged plane
    staged: int           # input elements per thread per plane
    planes: tuple[tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]], ...]
    # per staged input plane: (plane index in the slab, ((output plane, kd), ...), outputs finished after it)
    row_taps: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]  # window row -> ((output row, kh), ...)
    weights_in_registers: bool
    fmas: int
    live_accumulators: int
    conflict_cycles: int  # shared-memory cycles of one window-row read by the first warp
    weight_floats: int    # floats of shared memory for the weights (0: they are in registers)

    @property
    def shared_bytes(self) -> int:
        return 4 * (2 * self.slot + self.weight_floats)


def _vector(wt: int, sw: int) -> int:
    """The widest shared-memory read (in floats) that every thread's window start is aligned to."""
    step = wt * sw
    return 4 if step % 4 == 0 else 2 if step % 2 == 0 else 1


def _conflict_cycles(tiles: DepthwiseTiles, pitch: int, vector: int, reads: int, row_step: int, col_step: int) -> int:
    """Shared-memory cycles the first warp spends reading one window row (all `reads` vectors),
    counting bank conflicts: a vector access is served per group of 32 / vector lanes; a bank
    holding k distinct words a group asks for takes k cycles."""
    lanes_w = tiles.tw // tiles.wt
    lanes = min(32, tiles.threads)
    per_phase = 32 // vector
    cycles = 0
    for v in range(reads):
        for first in range(0, lanes, per_phase):
            banks: dict[int, set[int]] = {}
            for lane in range(first, min(first + per_phase, lanes)):
                lw, lh = lane % lanes_w, lane // lanes_w
                start = lh * row_step * pitch + lw * col_step + v * vector
                for word in range(start, start + vector):
                    banks.setdefault(word % BANKS, set()).add(word)
            cycles += max(len(words) for words in banks.values())
    return cycles


def geometry(spec: ConvSpec, tiles: DepthwiseTiles) -> Geometry:
    kd_, kh_, kw_ = spec.kernel_size
    sd, sh, sw = spec.stride
    dd, dh, dw = spec.dilation
    ht, wt, th, tw, dt = tiles.ht, tiles.wt, tiles.th, tiles.tw, tiles.dt
    rows_in = (th - 1) * sh + (kh_ - 1) * dh + 1
    cols_in = (tw - 1) * sw + (kw_ - 1) * dw + 1
    thread_rows = (ht - 1) * sh + (kh_ - 1) * dh + 1
    thread_cols = (wt - 1) * sw + (kw_ - 1) * dw + 1
    vector = _vector(wt, sw)
    reads = -(-thread_cols // vector)
    lanes_w = tw // wt
    # Each thread's vector reads must stay inside its row; then the pitch with the fewest conflicts.
    least = max(cols_in, (lanes_w - 1) * wt * sw + reads * vector)
    least = -(-least // vector) * vector
    options = [(_conflict_cycles(tiles, p, vector, reads, ht * sh, wt * sw), p)
               for p in range(least, least + BANKS + 1, vector)]
    conflict_cycles, pitch = min(options)
    slot = -(-rows_in * pitch // 4) * 4  # each slot starts 16-byte aligned
    staged = -(-rows_in * cols_in // max(tiles.threads, 1))

    # Input plane p of the slab feeds output plane o through tap kd where o * sd + kd * dd == p.
    pairs: dict[int, list[tuple[int, int]]] = {}
    for o in range(dt):
        for kd in range(kd_):
            pairs.setdefault(o * sd + kd * dd, []).append((o, kd))
    last = {o: o * sd + (kd_ - 1) * dd for o in range(dt)}
    planes = tuple((p, tuple(sorted(pairs[p])), tuple(o for o in range(dt) if last[o] == p)) for p in sorted(pairs))
    live = 0
    for p, _, _ in planes:
        live = max(live, sum(1 for o in range(dt) if o * sd <= p <= last[o]))
    rows: dict[int, list[tuple[int, int]]] = {}
    for r in range(ht):
        for kh in range(kh_):
            rows.setdefault(r * sh + kh * dh, []).append((r, kh))
    in_registers = spec.kernel_volume <= MAX_REGISTER_WEIGHTS
    return Geometry(rows_in=rows_in, cols_in=cols_in, thread_rows=thread_rows, thread_cols=thread_cols,
                    vector=vector, reads=reads, pitch=pitch, slot=slot, staged=staged, planes=planes,
                    row_taps=tuple((rr, tuple(rows[rr])) for rr in sorted(rows)),
                    weights_in_registers=in_registers,
                    fmas=dt * spec.kernel_volume * ht * wt, live_accumulators=live * ht * wt,
                    conflict_cycles=conflict_cycles,
                    weight_floats=0 if in_registers else -(-spec.kernel_volume // 4) * 4)


def supports_depthwise(spec: ConvSpec) -> str | None:
    """None if the depthwise template serves `spec`; otherwise the reason it does not."""
    if spec.groups != spec.in_channels:
        return (f"not depthwise: groups={spec.groups} with in_channels={spec.in_channels} "
                "(the depthwise template needs groups == in_channels)")
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the depthwise template reads contiguous NCDHW only"
    if spec.kernel_volume > MAX_KERNEL_TAPS:
        return (f"kernel {'x'.join(map(str, spec.kernel_size))} has {spec.kernel_volume} taps; "
                f"the depthwise template unrolls at most {MAX_KERNEL_TAPS}")
    return default_depthwise_tiles(spec).problem(spec)


def _fit(spec: ConvSpec, tiles: DepthwiseTiles) -> DepthwiseTiles:
    """`tiles` with the slab shortened until the unrolled code and the accumulators fit."""
    while tiles.dt > 1 and tiles.problem(spec) is not None:
        tiles = dataclasses.replace(tiles, dt=tiles.dt // 2)
    return tiles


def default_depthwise_tiles(spec: ConvSpec) -> DepthwiseTiles:
    """128 threads over a 32x32 tile, each 2 rows x 4 columns, 8 planes along d: a 32x32 plane
    whole per block, and 10 input planes staged for 8 output planes (3x3x3). Where that does
    not fit (strides make the staged plane larger), smaller tiles."""
    for tiles in (DepthwiseTiles(ht=2, wt=4, th=32, tw=32, dt=8), DepthwiseTiles(ht=1, wt=4, th=16, tw=32, dt=8),
                  DepthwiseTiles(ht=1, wt=2, th=16, tw=16, dt=8), DepthwiseTiles(ht=1, wt=1, th=16, tw=16, dt=8)):
        tiles = _fit(spec, tiles)
        if tiles.problem(spec) is None:
            return tiles
    return tiles


def depthwise_candidates(spec: ConvSpec) -> list[DepthwiseTiles]:
    """The autotuning space: the default, two planes in flight instead of one, a longer slab
    (less halo along d), one output row per thread (fewer registers, more threads per SM),
    a half-height tile and eight columns per thread. (Four rows per thread took 255 registers
    and spilled in float32.)"""
    found = [default_depthwise_tiles(spec)] + [_fit(spec, t) for t in (
        DepthwiseTiles(ht=2, wt=4, th=32, tw=32, dt=8, ahead=2),
        DepthwiseTiles(ht=2, wt=4, th=32, tw=32, dt=16),
        DepthwiseTiles(ht=1, wt=4, th=32, tw=32, dt=8),
        DepthwiseTiles(ht=1, wt=4, th=16, tw=32, dt=8, ahead=2),
        DepthwiseTiles(ht=1, wt=8, th=32, tw=32, dt=8),
    )]
    return [t for t in dict.fromkeys(found) if t.problem(spec) is None]


def render_depthwise(spec: ConvSpec, tiles: DepthwiseTiles | None = None, wide: bool = False) -> Source:
    """The depthwise template for `spec`; `wide` selects 64-bit offsets (see render.WIDE_INDEX_ELEMENTS)."""
    tiles = serving_tiles(spec, tiles, "depthwise template", supports_depthwise(spec), default_depthwise_tiles)
    g = geometry(spec, tiles)
    name = f"conv3d_fwd_dw_{spec.tag}" + ("_i64" if wide else "")
    body = _environment(templates_dir()).get_template(DEPTHWISE_TEMPLATE).render(
        spec=spec, tiles=tiles, g=g, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS, wide=wide)
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "threads": f"{tiles.threads}; each {tiles.ht}x{tiles.wt} outputs of {tiles.dt} planes",
        "staging": (f"{len(g.planes)} input planes of {g.rows_in}x{g.cols_in} per block, two shared slots of "
                    f"{g.rows_in}x{g.pitch} floats, {g.staged} elements per thread"),
        "reads": f"{g.reads} x {g.vector} floats per window row, {g.conflict_cycles} cycles a warp",
        "weights": "registers" if g.weights_in_registers else "shared memory",
        "shared": f"{g.shared_bytes} bytes per block",
        "offsets": "64-bit" if wide else "32-bit",
    }
    if spec.precision == "tf32":
        params["precision"] = "tf32 allowed; this template multiplies in full float32"
    return Source(name=name, template=DEPTHWISE_TEMPLATE, body=body, identity=spec.canonical_json(),
                  arg_names=DIRECT_ARGS, params=params)
