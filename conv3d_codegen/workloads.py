"""Named workloads: a spec plus the input it runs on. The seeds are the main job's defaults."""
from __future__ import annotations

from dataclasses import dataclass

from .spec import ConvSpec


@dataclass(frozen=True)
class Workload:
    name: str
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]  # (n, ci, d, h, w)

    def with_dtype(self, dtype: str, precision: str = "ieee") -> "Workload":
        return Workload(self.name, self.spec.model_copy(update={"dtype": dtype, "precision": precision}),
                        self.input_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        n, _, d, h, w = self.input_shape
        return (n, self.spec.out_channels, *self.spec.output_size(d, h, w))

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs; the padding zeros count too, as torch counts them."""
        n, _, od, oh, ow = self.output_shape
        return 2 * n * od * oh * ow * self.spec.out_channels * self.spec.in_per_group * self.spec.kernel_volume

    @property
    def min_bytes(self) -> int:
        """Each input, weight and output element moved through memory once."""
        size = self.spec.torch_dtype.itemsize
        elements = (_count(self.input_shape) + _count(self.spec.weight_shape) + _count(self.output_shape)
                    + (self.spec.out_channels if self.spec.bias else 0))
        return elements * size


def _count(shape) -> int:
    total = 1
    for s in shape:
        total *= s
    return total


def _w(name, ci, co, k, input_shape, **kwargs) -> Workload:
    return Workload(name, ConvSpec(in_channels=ci, out_channels=co, kernel_size=k, **kwargs), input_shape)


WORKLOADS = {w.name: w for w in (
    _w("seed-a", 3, 64, (3, 5, 7), (16, 3, 64, 64, 64)),
    _w("seed-b", 3, 64, (3, 3, 3), (16, 3, 64, 64, 64)),
    _w("wide", 64, 64, 3, (8, 64, 32, 32, 32), padding=1),
    _w("strided", 32, 64, (5, 3, 3), (8, 32, 32, 64, 64), stride=2, padding=1),
    _w("depthwise", 64, 64, 3, (8, 64, 32, 32, 32), padding=1, groups=64),
    _w("pointwise", 64, 128, 1, (8, 64, 16, 32, 32)),
)}
DEFAULT_WORKLOADS = ("seed-a", "seed-b")
