"""Random valid configurations against torch in float64, drawn by hypothesis.

Each drawn spec needs its own build, seconds each; hypothesis draws one example at a time.
So the test draws twice with the same seed: the first pass only collects the specs, which
then build in parallel; the second pass (same seed, same draws) checks each against torch.
The seed is printed; reproduce a run with the command printed next to it.
"""
import os
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.spec import ConvSpec

FUZZ_SEED = int(os.environ.get("CONV3D_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES = int(os.environ.get("CONV3D_FUZZ_EXAMPLES", "300"))
LAYOUTS = ["contiguous", "strided", "unbatched", "channels_last_3d"]


@dataclass(frozen=True)
class Problem:
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]
    layout: str


@st.composite
def problems(draw) -> Problem:
    kernel = tuple(draw(st.integers(1, 7)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(3))
    if max(stride) == 1 and draw(st.booleans()):
        padding = "same"
    else:
        padding = tuple(draw(st.integers(0, 3)) for _ in range(3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cig, cog = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    if draw(st.integers(0, 4)) == 0:
        groups, cig, cog = draw(st.integers(2, 8)), 1, 1  # depthwise
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    spec = ConvSpec(in_channels=groups * cig, out_channels=groups * cog, kernel_size=kernel, stride=stride,
                    padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()), dtype=dtype,
                    precision=draw(st.sampled_from(["ieee", "tf32"])) if dtype == "float32" else "ieee")
    before, after = spec.pad_before, spec.pad_after
    sizes = tuple(max(1, dil * (k - 1) + 1 - b - a) + draw(st.integers(0, 9))  # the output is never empty
                  for k, dil, b, a in zip(kernel, dilation, before, after))
    return Problem(spec, (draw(st.integers(1, 3)), spec.in_channels, *sizes), draw(st.sampled_from(LAYOUTS)))


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2]  # same values, non-contiguous
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


SETTINGS = dict(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def test_random_configurations_match_torch(tmp_path):
    print(f"\nfuzz seed {FUZZ_SEED}; reproduce: CONV3D_FUZZ_SEED={FUZZ_SEED} pytest tests/gpu/test_fuzz.py")
    dispatcher = Dispatcher(KernelCache(tmp_path / "cache"))

    drawn: list[Problem] = []

    @settings(phases=[Phase.generate], **SETTINGS)
    @seed(FUZZ_SEED)
    @given(problems())
    def collect(problem: Problem):
        drawn.append(problem)

    collect()
    built = dispatcher.prebuild({p.spec for p in drawn})
    assert not [err for err in built.values() if isinstance(err, Exception)]

    checked: list[Problem] = []

    @settings(phases=[Phase.generate, Phase.shrink], **SETTINGS)
    @seed(FUZZ_SEED)
    @given(problems())
    def check(problem: Problem):
        spec = problem.spec
        x, weight, bias = random_inputs(spec, problem.input_shape)
        x = arrange(x, problem.layout)
        args = spec.functional_args()
        out = run(dispatcher, x[0] if problem.layout == "unbatched" else x, weight, bias,
                  precision=spec.precision, **args)
        ref = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **args)
        err = relative_error(out, ref[0] if problem.layout == "unbatched" else ref)
        assert err <= tolerance(spec), f"{spec.to_text()} on {problem.input_shape} {problem.layout}: {err:.2e}"
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
        if not channels_last:  # those go to torch (with size-1 dims a strided input can be one too)
            plan = dispatcher.plan(x[:1] if problem.layout == "unbatched" else x, weight, bias, spec.stride,
                                   spec.padding, spec.dilation, spec.groups, spec.precision)
            assert plan.route in ("generated", "generic"), plan.reason
        checked.append(problem)

    check()
    torch.cuda.synchronize()
    assert len(checked) >= EXAMPLES
    hits = dispatcher.cache.stats.disk_hits
    print(f"{len(checked)} examples, {len({p.spec for p in checked})} specs, {len(built)} built up front, "
          f"{dispatcher.cache.stats.builds - len(built)} built while checking, {hits} disk hits")
