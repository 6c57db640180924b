"""Dispatcher modes, whole models and `conv3d-gen build --model`, with real builds."""
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from conv3d_codegen import strict
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, explain
from conv3d_codegen.measure import random_inputs, relative_error
from conv3d_codegen.models import convert
from conv3d_codegen.ops import run
from conv3d_codegen.spec import ConvSpec

from ..unit.models_for_tests import small_cnn

REPO = Path(__file__).resolve().parents[2]
SPEC = ConvSpec.from_text("3x3x5 --cin 3 --cout 6 --padding 1x1x2")  # built by no other test


def reference(x, w, b, spec):
    return F.conv3d(x.double(), w.double(), b.double(), **spec.functional_args())


def settle(dispatcher, x, w, b, spec, timeout=180.0):
    """Call until the background build is in use."""
    deadline = time.monotonic() + timeout
    while True:
        plan = dispatcher.plan(x, w, b, spec.stride, spec.padding, spec.dilation, spec.groups)
        if plan.pending is None:
            return plan
        assert time.monotonic() < deadline, "the background build never finished"
        plan.pending.result(timeout=timeout)


def test_async_answers_the_first_call_at_once_then_switches(tmp_path):
    dispatcher = Dispatcher(KernelCache(tmp_path / "timed"), mode="async")
    x, w, b = random_inputs(SPEC, (2, 3, 9, 10, 11))
    F.conv3d(x, w, b, **SPEC.functional_args())  # torch's own first-call setup (cuDNN) is not what is timed
    # Nor is the process's first call through the op and a dispatcher (its one-time setup took ~3 s
    # when this test ran first in a fresh process): one call of another spec, in a cache of its own.
    other = ConvSpec.from_text("3x3x3 --cin 3 --cout 4 --padding 1")
    run(Dispatcher(KernelCache(tmp_path / "warm-up"), mode="async"), *random_inputs(other, (1, 3, 5, 6, 7)),
        **other.functional_args())
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = run(dispatcher, x, w, b, **SPEC.functional_args())
    first_call = time.perf_counter() - started
    first = dispatcher.plan(x, w, b, SPEC.stride, SPEC.padding, SPEC.dilation, SPEC.groups)
    assert first.route == "torch" and first.pending is not None and "in the background" in first.reason
    assert first_call < 1.0 and relative_error(out, reference(x, w, b, SPEC)) <= 1e-5  # no wait on nvcc
    assert settle(dispatcher, x, w, b, SPEC).route == "generated"
    with strict():
        out = run(dispatcher, x, w, b, **SPEC.functional_args())
    assert relative_error(out, reference(x, w, b, SPEC)) <= 1e-5


def test_async_with_autotuning_builds_candidates_then_tunes_on_a_later_call(tmp_path):
    dispatcher = Dispatcher(KernelCache(tmp_path), mode="async", autotune=True)
    x, w, b = random_inputs(SPEC, (2, 3, 9, 10, 11))
    out = run(dispatcher, x, w, b, **SPEC.functional_args())
    assert relative_error(out, reference(x, w, b, SPEC)) <= 1e-5
    plan = settle(dispatcher, x, w, b, SPEC)
    assert plan.tuned and plan.route in ("generated", "torch")
    assert relative_error(run(dispatcher, x, w, b, **SPEC.functional_args()), reference(x, w, b, SPEC)) <= 1e-5


def test_prebuilt_never_compiles_and_uses_what_the_cache_holds(tmp_path):
    x, w, b = random_inputs(SPEC, (1, 3, 7, 8, 9))
    prebuilt = Dispatcher(KernelCache(tmp_path), mode="prebuilt")
    out = run(prebuilt, x, w, b, **SPEC.functional_args())
    plan = prebuilt.plan(x, w, b, SPEC.stride, SPEC.padding, SPEC.dilation, SPEC.groups)
    assert plan.route == "torch" and "mode 'prebuilt'" in plan.reason and "is not in the cache" in plan.reason
    assert prebuilt.cache.stats.builds == 0 and not list(tmp_path.glob("conv3d_fwd_*"))
    assert relative_error(out, reference(x, w, b, SPEC)) <= 1e-5
    Dispatcher(KernelCache(tmp_path)).prebuild([SPEC])
    again = Dispatcher(KernelCache(tmp_path), mode="prebuilt")
    with strict():
        out = run(again, x, w, b, **SPEC.functional_args())
    assert again.cache.stats.builds == 0 and relative_error(out, reference(x, w, b, SPEC)) <= 1e-5


def test_off_runs_torch(tmp_path):
    x, w, b = random_inputs(SPEC, (1, 3, 7, 8, 9))
    off = Dispatcher(KernelCache(tmp_path), mode="off")
    assert torch.equal(run(off, x, w, b, **SPEC.functional_args()), F.conv3d(x, w, b, **SPEC.functional_args()))
    assert off.plan(x, w, b, SPEC.stride, SPEC.padding, SPEC.dilation, SPEC.groups).reason == "mode 'off'"


def test_convert_runs_a_small_cnn_with_outputs_and_grads_of_torch(dispatcher, monkeypatch):
    monkeypatch.setattr("conv3d_codegen.ops.default_dispatcher", lambda: dispatcher)
    torch.manual_seed(0)
    theirs = small_cnn().cuda()
    ours = convert(small_cnn().cuda())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 9, 10, 11, device="cuda")
    with strict():
        out = ours(x)
    out.square().mean().backward()
    ref_model = theirs.double()
    ref = ref_model(x.double())
    ref.square().mean().backward()
    assert relative_error(out, ref) <= 1e-5
    for (name, p), q in zip(ours.named_parameters(), ref_model.parameters()):
        assert relative_error(p.grad, q.grad) <= 1e-5, name
    lines = explain(ours, dispatcher).splitlines()
    assert [line.split(":")[0] for line in lines] == ["0", "2", "4"]
    assert all("generated kernel conv3d_fwd_" in line for line in lines), lines


def test_build_model_prebuilds_every_conv_of_a_model(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "build", "--model",
                           "tests.unit.models_for_tests:small_cnn", "--input-shape", "2,3,9,10,11", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**__import__("os").environ, "CONV3D_CODEGEN_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert [k["status"] for k in json.loads(done.stdout)["kernels"]] == ["ok"] * 3
    prebuilt = Dispatcher(KernelCache(tmp_path), mode="prebuilt")
    model = convert(small_cnn().cuda())
    x = torch.randn(2, 3, 9, 10, 11, device="cuda")
    with strict():  # every layer finds its kernel: none is built now
        for layer in model:
            if not isinstance(layer, torch.nn.Conv3d):
                x = layer(x)
            elif layer.padding_mode == "zeros":
                x = run(prebuilt, x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            else:
                x = run(prebuilt, F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode),
                        layer.weight, layer.bias, layer.stride, 0, layer.dilation, layer.groups)
    assert prebuilt.cache.stats.builds == 0
