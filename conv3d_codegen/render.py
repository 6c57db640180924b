"""Rendering: ConvSpec -> CUDA source, through the Jinja templates in templates/.

A Source is the emitted kernel without its banner; the banner names the cache key, which
depends on the source, so it is added once the key is known (`Source.text(key)`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import jinja2

from . import __version__
from .spec import DTYPE_TAGS, MEMORY_FORMATS, ConvSpec

DIRECT_TEMPLATE = "conv3d_fwd_direct.cu.j2"
GENERIC_TEMPLATE = "conv3d_fwd_generic.cu.j2"

# Run-time arguments each template's C entry point takes, in order (see common.cuh.j2).
DIRECT_ARGS = ("n", "d", "h", "w", "od", "oh", "ow")
GENERIC_ARGS = ("n", "ci", "co", "d", "h", "w", "od", "oh", "ow", "kd", "kh", "kw",
                "sd", "sh", "sw", "pd", "ph", "pw", "dd", "dh", "dw", "groups", "has_bias")

# Limits of the direct template. Unrolled taps cost code size and compile time (each is
# COT*WT FMAs); 343 admits every kernel up to 7x7x7 with one input channel per chunk.
MAX_UNROLLED_TAPS = 343
MAX_STAGED_WEIGHT_BYTES = 32 * 1024  # weights in shared memory per block


def templates_dir() -> Path:
    """templates/ inside the installed wheel, else the source checkout's top-level folder."""
    packaged = importlib.resources.files(__package__) / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def _environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(root), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


@functools.cache
def generator_hash(root: Path | None = None) -> str:
    """Hash of everything that generates source: the templates and the codegen modules."""
    root = root or templates_dir()
    h = hashlib.sha256()
    here = Path(__file__).parent
    files = sorted(root.glob("*.j2")) + [here / "spec.py"] + sorted(here.glob("render*.py"))
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Tiles:
    """Tile sizes of the direct template (the autotuner's search space)."""

    template: ClassVar[str] = DIRECT_TEMPLATE

    cot: int    # output channels per thread
    wt: int     # consecutive outputs along w per thread
    block: int  # threads per block
    cic: int    # input channels whose weights are staged in shared memory at once

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if spec.out_per_group % self.cot:
            return f"cot={self.cot} does not divide the {spec.out_per_group} output channels per group"
        if spec.in_per_group % self.cic:
            return f"cic={self.cic} does not divide the {spec.in_per_group} input channels per group"
        if self.block % 32 or not 32 <= self.block <= 1024:
            return f"block={self.block} is not a multiple of 32 between 32 and 1024"
        if self.cic * spec.kernel_volume > MAX_UNROLLED_TAPS:
            return f"cic={self.cic} x {spec.kernel_volume} taps exceeds {MAX_UNROLLED_TAPS} unrolled taps"
        if self.cic * spec.kernel_volume * self.cot * 4 > MAX_STAGED_WEIGHT_BYTES:
            return f"staged weights exceed {MAX_STAGED_WEIGHT_BYTES} bytes of shared memory"
        return None

    def __str__(self) -> str:
        return f"cot={self.cot} wt={self.wt} block={self.block} cic={self.cic}"


def supports(spec: ConvSpec) -> str | None:
    """None if the direct template serves `spec`; otherwise the reason it does not."""
    if spec.kernel_volume > MAX_UNROLLED_TAPS:
        return (f"kernel {'x'.join(map(str, spec.kernel_size))} has {spec.kernel_volume} taps; "
                f"the direct template unrolls at most {MAX_UNROLLED_TAPS}")
    return default_tiles(spec).problem(spec)


def default_tiles(spec: ConvSpec) -> Tiles:
    """A tile choice that is good on the seed shapes and valid for any supported spec."""
    cot = next(c for c in (8, 6, 4, 3, 2, 1) if spec.out_per_group % c == 0)
    return Tiles(cot=cot, wt=4, block=128, cic=fitting_cic(spec, cot))


def fitting_cic(spec: ConvSpec, cot: int, wt: int = 4, block: int = 128) -> int:
    """The most input channels per chunk that keep unrolling and shared memory in bounds."""
    fits = [c for c in range(1, spec.in_per_group + 1) if spec.in_per_group % c == 0
            and Tiles(cot, wt, block, c).problem(spec) is None]
    return max(fits, default=1)


@dataclass(frozen=True)
class Source:
    """An emitted kernel, before its banner."""

    name: str                    # kernel symbol, readable: conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32
    template: str
    body: str
    identity: str                # canonical spec JSON, or what else the source depends on
    arg_names: tuple[str, ...]   # run-time arguments of the C entry point, in order
    params: dict[str, str] = field(default_factory=dict)  # for the banner
    generator_version: str = __version__
    layout: str = "ncdhw"        # how the kernel indexes input and output: 'ncdhw' or 'ndhwc'

    @property
    def entry(self) -> str:
        return f"{self.name}_launch"

    @property
    def memory_format(self):
        """The torch memory format the kernel's input and output must be dense in."""
        return MEMORY_FORMATS[self.layout]

    def edited(self, suffix: str, body: str) -> "Source":
        """This source with `body` (an edit of its own) in place of its body, renamed
        <name>_<suffix> throughout: a variant that builds beside the original, as the bench's
        diagnostics use to switch a part of a kernel off."""
        name = f"{self.name}_{suffix}"
        return replace(self, name=name, body=body.replace(self.name, name))

    def text(self, key: str) -> str:
        """The full emitted source: banner (with the cache key) then body."""
        banner = _environment(templates_dir()).get_template("common.cuh.j2").module.banner(self, key)
        return banner + "\n" + self.body


# What the templates fit into. Shared memory: an H100 SM has 228 KB (1 KB of it reserved per
# block); a block may have at most 163 KB on an A100, the smallest of the GPUs the templates run
# on (sm_80 and newer), and 227 KB on an H100 (for templates that run on sm_90 only).
SHARED_BYTES_PER_SM = 228 * 1024
SHARED_BYTES_PER_BLOCK = 163 * 1024
SHARED_BYTES_PER_BLOCK_SM90 = 227 * 1024
REGISTERS_PER_SM = 65536


# Calls with a tensor of this many elements or more use 64-bit offsets; smaller ones keep
# 32-bit arithmetic. Half of 2^31 leaves room for offsets idle threads compute past the end.
WIDE_INDEX_ELEMENTS = 2**30


def wide_offsets(spec: ConvSpec, input_shape: tuple[int, ...]) -> bool:
    """Whether a call on `input_shape` needs the 64-bit-offset variant."""
    n, ci, d, h, w = input_shape
    od, oh, ow = spec.output_size(d, h, w)
    return max(n * ci * d * h * w, n * spec.out_channels * od * oh * ow) >= WIDE_INDEX_ELEMENTS


@dataclass(frozen=True)
class InputSize:
    """The input size (d, h, w) a kernel is built for, or None for any: a template built for one
    size folds it (and the output's size) as constants, and its launcher refuses other sizes."""

    size: tuple[int, int, int] | None
    out_size: tuple[int, int, int] | None

    @classmethod
    def of(cls, spec: ConvSpec, size: tuple[int, ...] | None) -> "InputSize":
        size = tuple(int(v) for v in size) if size is not None else None
        return cls(size, spec.output_size(*size) if size else None)

    @property
    def suffix(self) -> str:
        """What the kernel's name ends with."""
        return "_{}x{}x{}".format(*self.size) if self.size else ""

    @property
    def param(self) -> str:
        """The banner's line."""
        return "{}x{}x{} only".format(*self.size) if self.size else "any (run-time sizes)"

    def identity(self, spec: ConvSpec) -> str:
        return spec.canonical_json() + (" size={}x{}x{}".format(*self.size) if self.size else "")


def serving_tiles(spec: ConvSpec, tiles, template: str, reason: str | None, default: Callable):
    """`tiles` (or default(spec) if None) for a render of `template` ("the direct template"),
    raising ValueError where the template does not serve the spec (`reason`, from its
    supports function) or the tiles do not fit it."""
    if reason:
        raise ValueError(f"the {template} does not serve this spec: {reason}")
    tiles = tiles or default(spec)
    if (problem := tiles.problem(spec)) is not None:
        raise ValueError(f"tiles {tiles} do not fit the spec: {problem}")
    return tiles


def render_direct(spec: ConvSpec, tiles: Tiles | None = None, wide: bool = False) -> Source:
    """The direct template for `spec`; `wide` selects 64-bit offsets (see WIDE_INDEX_ELEMENTS)."""
    tiles = serving_tiles(spec, tiles, "direct template", supports(spec), default_tiles)
    name = f"conv3d_fwd_{spec.tag}" + ("_i64" if wide else "")
    before, after = spec.pad_before, spec.pad_after  # only w's padding changes the code
    ndhwc = spec.layout == "ndhwc"
    kd, kh, _ = spec.kernel_size
    # The unrolled input rows (ci, kd, kh) in emission order: channels outermost in both
    # layouts. (In NDHWC, channels innermost would read a position's channels back to back,
    # but rows of equal (kd, kh) then share their bounds check, ptxas merges them and hoists
    # every channel's loads at once: with 8 channels per chunk that spills.)
    rows = [(ci, d, h) for ci in range(tiles.cic) for d in range(kd) for h in range(kh)]
    body = _environment(templates_dir()).get_template(DIRECT_TEMPLATE).render(
        spec=spec, tiles=tiles, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS,
        check_w=before[2] + after[2] > 0, wide=wide, ndhwc=ndhwc, rows=rows,
        store_bytes=channel_store_bytes(spec, tiles) if ndhwc else 0)
    params = {"spec": spec.canonical_json(), "tiles": str(tiles), "offsets": "64-bit" if wide else "32-bit"}
    if ndhwc:
        params["layout"] = ("NDHWC (channels_last_3d) input and output, weight (co, ci, kd, kh, kw); "
                            f"{channel_store_bytes(spec, tiles) or spec.torch_dtype.itemsize}-byte output stores")
    if spec.precision == "tf32":
        params["precision"] = "tf32 allowed; this template multiplies in full float32"
    return Source(name=name, template=DIRECT_TEMPLATE, body=body, identity=spec.canonical_json(),
                  arg_names=DIRECT_ARGS, params=params, layout=spec.layout)


# A kernel that stores vectors needs its output this aligned (Kernel checks it).
OUTPUT_ALIGNMENT = 16


def channel_store_bytes(spec: ConvSpec, tiles: Tiles) -> int:
    """NDHWC: a thread's COT channels of one position are neighbours in memory, stored as
    vectors of this many bytes (16, 8 or 4); 0: one element at a time (an odd COT in a 16-bit
    dtype). Every store is aligned: channel offsets are multiples of COT."""
    size = tiles.cot * spec.torch_dtype.itemsize
    return next((b for b in (16, 8, 4) if size % b == 0), 0)


def render_generic(dtype: str, layout: str = "ncdhw") -> Source:
    """The generic template in `dtype`, indexing input and output in `layout` ('ncdhw' or
    'ndhwc'; the weight is contiguous either way)."""
    name = f"conv3d_fwd_generic_{DTYPE_TAGS[dtype]}" + ("_cl" if layout == "ndhwc" else "")
    body = _environment(templates_dir()).get_template(GENERIC_TEMPLATE).render(
        dtype=dtype, name=name, entry=f"{name}_launch", arg_names=GENERIC_ARGS, ndhwc=layout == "ndhwc")
    identity = {"generic": dtype} | ({"layout": layout} if layout != "ncdhw" else {})
    params = {"dtype": dtype, "arguments": " ".join(GENERIC_ARGS)}
    if layout != "ncdhw":
        params["layout"] = "NDHWC (channels_last_3d) input and output, weight (co, ci, kd, kh, kw)"
    return Source(name=name, template=GENERIC_TEMPLATE, body=body, identity=json.dumps(identity),
                  arg_names=GENERIC_ARGS, params=params, layout=layout)
