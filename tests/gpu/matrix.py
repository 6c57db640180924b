"""The GPU test matrix: every kernel shape in every dtype, then each parameter variation in
every dtype on a rotating kernel, then the seed workloads."""
from dataclasses import dataclass

from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

KERNELS = [(1, 1, 1), (3, 3, 3), (3, 5, 7), (5, 3, 3), (1, 3, 3), (7, 1, 1)]
DTYPES = ["float32", "float16", "bfloat16"]
ODD = (17, 9, 33)  # d, h, w

VARIATIONS = {
    "stride2": dict(stride=2),
    "stride1x2x3": dict(stride=(1, 2, 3)),
    "pad1": dict(padding=1),
    "padsame": dict(padding="same"),
    "pad2x1x0": dict(padding=(2, 1, 0)),
    "dil2": dict(dilation=2, padding=1),
    "groups2": dict(groups=2),
    "depthwise": dict(groups=8, in_channels=8, out_channels=8),
    "nobias": dict(bias=False),
}


@dataclass(frozen=True)
class Case:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]

    def __str__(self) -> str:
        return self.name


def _case(name, kernel, dtype, batch, **changes) -> Case:
    fields = dict(in_channels=4, out_channels=8, kernel_size=kernel, dtype=dtype) | changes
    spec = ConvSpec(**fields)
    return Case(f"{name}-{'x'.join(map(str, kernel))}-{dtype}", spec, (batch, spec.in_channels, *ODD))


CASES = [_case("base", k, dt, batch=1 + 4 * (i % 2)) for i, k in enumerate(KERNELS) for dt in DTYPES]
CASES += [_case(name, KERNELS[(i + j) % len(KERNELS)], dt, batch=1 + 4 * (j % 2), **changes)
          for i, (name, changes) in enumerate(VARIATIONS.items()) for j, dt in enumerate(DTYPES)]
CASES += [Case(f"{w}-{dt}", WORKLOADS[w].spec.model_copy(update={"dtype": dt}), WORKLOADS[w].input_shape)
          for w in ("seed-a", "seed-b") for dt in DTYPES]


def pick(prefix: str, dtype: str) -> Case:
    """The first case whose name starts with `prefix`, in `dtype`."""
    return next(c for c in CASES if c.name.startswith(prefix) and c.spec.dtype == dtype)
