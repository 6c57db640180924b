"""The gradient renderers: the dgrad convolution is checked in float64 on the CPU (it is a
plain forward convolution), the wgrad template's tiles and emitted source by inspection."""
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.backward import flipped_weight
from conv3d_codegen.render_grad import (WgradTiles, default_wgrad_tiles, dgrad_spec, render_wgrad, supports_wgrad,
                                        wgrad_candidates, wgrad_rows)
from conv3d_codegen.spec import ConvSpec

DGRAD_SPECS = ["3x5x7 --cin 3 --cout 64", "3x3x3 --cin 4 --cout 8 --padding 1 --groups 2",
               "3x3x3 --cin 6 --cout 6 --groups 6 --padding same --dilation 2",
               "1x3x5 --cin 2 --cout 4 --padding 0x1x2 --dilation 1x2x1 --no-bias", "1x1x1 --cin 8 --cout 4"]


@pytest.mark.parametrize("text", DGRAD_SPECS)
def test_dgrad_convolution_is_the_gradient_of_the_input(text):
    spec = ConvSpec.from_text(text)
    dspec, reason = dgrad_spec(spec)
    assert reason is None and dspec.stride == (1, 1, 1) and not dspec.bias
    x = torch.randn(2, spec.in_channels, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(spec.weight_shape, dtype=torch.float64)
    out = F.conv3d(x, weight, None, **spec.functional_args())
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    got = F.conv3d(grad_out, flipped_weight(spec, weight), None, **dspec.functional_args())
    assert got.shape == x.shape
    torch.testing.assert_close(got, x.grad)


@pytest.mark.parametrize("text,why", [
    ("3x3x3 --cin 4 --cout 8 --stride 2", "stride"),
    ("2x2x2 --cin 4 --cout 8 --padding same", "uneven padding"),
    ("3x3x3 --cin 4 --cout 8 --padding 3", "exceeds the kernel's reach"),
])
def test_dgrad_says_why_it_does_not_apply(text, why):
    dspec, reason = dgrad_spec(ConvSpec.from_text(text))
    assert dspec is None and why in reason


@pytest.mark.parametrize("text", ["3x5x7 --cin 3 --cout 64", "3x3x3 --cin 64 --cout 64 --padding 1",
                                  "3x3x3 --cin 64 --cout 64 --groups 64 --padding 1", "1x1x7 --cin 5 --cout 9",
                                  "5x3x3 --cin 32 --cout 64 --stride 2 --padding 1", "7x7x7 --cin 2 --cout 16"])
def test_default_wgrad_tiles_fit(text):
    spec = ConvSpec.from_text(text)
    tiles = default_wgrad_tiles(spec)
    assert supports_wgrad(spec) is None and tiles.problem(spec) is None
    assert tiles.block(spec) % 32 == 0 and tiles.block(spec) >= tiles.tc * tiles.rb
    assert spec.out_per_group % (tiles.cot * tiles.tc) == 0


def test_seed_a_wgrad_owns_every_row_in_one_block():
    spec = ConvSpec.from_text("3x5x7 --cin 3 --cout 64")
    assert default_wgrad_tiles(spec) == WgradTiles(cot=8, tc=8, rb=45, owc=64, wt=4)
    assert wgrad_rows(spec) == 45


def test_wgrad_tiles_say_what_is_wrong():
    spec = ConvSpec.from_text("3x5x7 --cin 3 --cout 64")
    assert "does not divide the 64" in WgradTiles(cot=8, tc=3, rb=45, owc=64, wt=4).problem(spec)
    assert "accumulators" in WgradTiles(cot=16, tc=1, rb=45, owc=64, wt=4).problem(spec)
    assert "threads per block" in WgradTiles(cot=1, tc=64, rb=45, owc=64, wt=4).problem(spec)
    assert "wt=3 does not divide" in WgradTiles(cot=8, tc=8, rb=45, owc=64, wt=3).problem(spec)
    # 64 x 64 grad_out and 45 rows of 70 inputs over 384 threads: 11 + 9 elements in registers
    assert WgradTiles(cot=8, tc=8, rb=45, owc=64, wt=4, prefetch=True).prefetch_registers(spec) == 20
    assert "prefetching holds 48" in WgradTiles(cot=8, tc=4, rb=14, owc=64, wt=4, prefetch=True).problem(spec)


def test_prefetching_wgrad_is_a_candidate_of_its_own():
    spec = ConvSpec.from_text("3x3x3 --cin 3 --cout 64")
    found = wgrad_candidates(spec, 62)
    prefetching = [t for t in found if t.prefetch]
    assert prefetching and len(found) == len(set(found)) and len({str(t) for t in found}) == len(found)
    assert all(dataclasses.replace(t, prefetch=False) in found for t in prefetching)
    body = render_wgrad(spec, prefetching[0]).body
    assert "fetch(item + splits)" in body and "__launch_bounds__(BLOCK, 1)" in body
    assert "fetch(" not in render_wgrad(spec, dataclasses.replace(prefetching[0], prefetch=False)).body


def test_wgrad_source_unrolls_the_taps_along_w_and_is_readable():
    spec = ConvSpec.from_text("3x5x7 --cin 3 --cout 64 --dtype bf16")
    source = render_wgrad(spec)
    assert source.name == "conv3d_wgrad_k3x5x7_s1_p0_d1_g1_ci3_co64_bf16"
    assert source.arg_names[-2:] == ("splits", "workspace")
    taps = re.findall(r"xv\[j \* SW \+ (\d+)\], acc\[c\]\[(\d)\]\);  // kw=(\d)", source.body)
    assert [(int(o), int(k), int(k2)) for o, k, k2 in taps] == [(k, k, k) for k in range(7)]
    assert "atomicAdd" not in source.body  # the reduction order is fixed
    assert render_wgrad(spec, wide=True).name.endswith("_i64")
