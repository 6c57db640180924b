"""The memo of plans (dispatch.PlanMemo, PlanMemos) that the forward dispatcher, wgrad and the
dgrad phase split share: reuse, staleness, the capture rule, the change hook and lifetimes.
CPU only: real Futures, a capture flag passed in."""
import gc
import logging
import weakref
from concurrent.futures import Future
from dataclasses import dataclass

import pytest
import torch

from conv3d_codegen import FallbackError, strict
from conv3d_codegen.autotune import Tuner
from conv3d_codegen.backward import WgradPlan, _wgrad_plans, weight_grad
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dgrad_phases import PhasesPlan
from conv3d_codegen.dispatch import Dispatcher, Plan, PlanMemo, PlanMemos, Revisable
from conv3d_codegen.render import Tiles
from conv3d_codegen.spec import ConvSpec


@dataclass(frozen=True)
class Toy(Revisable):
    name: str
    pending: Future | None = None
    provisional: bool = False


class Decider:
    """decide() for the memo: returns the next of `plans` and records what it was given."""

    def __init__(self, *plans: Toy):
        self.plans, self.befores = list(plans), []

    def __call__(self, before):
        self.befores.append(before)
        return self.plans.pop(0)


class Hook:
    def __init__(self):
        self.calls = []

    def __call__(self, before, plan):
        self.calls.append((before, plan))


def finished() -> Future:
    future = Future()
    future.set_result(None)
    return future


def test_a_plan_is_decided_once_and_reused():
    memo, decide, hook = PlanMemo(), Decider(Toy("a"), Toy("b")), Hook()
    first = memo.plan("k", decide, False, hook)
    assert all(memo.plan("k", decide, False, hook) is first for _ in range(3))
    assert memo.plan("other", decide, False, hook).name == "b"
    assert decide.befores == [None, None] and memo.plans() == [first, Toy("b")]
    assert hook.calls == [(None, first), (None, Toy("b"))]


def test_a_plan_waiting_on_a_build_is_decided_again_once_the_build_has_finished():
    build = Future()
    waiting, built = Toy("waiting", pending=build), Toy("built")
    memo, decide, hook = PlanMemo(), Decider(waiting, built), Hook()
    assert memo.plan("k", decide, False, hook) is waiting
    assert memo.plan("k", decide, False, hook) is waiting  # not done yet: reused
    build.set_result("kernel")
    assert memo.plan("k", decide, False, hook) is built
    assert memo.plan("k", decide, False, hook) is built
    assert decide.befores == [None, waiting]  # the decision sees the plan it replaces (and its future)
    assert hook.calls == [(None, waiting), (waiting, built)]


def test_a_failed_build_also_makes_the_plan_stale():
    build = Future()
    build.set_exception(RuntimeError("nvcc failed"))
    assert Toy("x", pending=build).stale and not Toy("y", pending=Future()).stale and not Toy("z").stale


def test_a_provisional_plan_is_decided_again_outside_capture_but_stands_inside():
    provisional, final = Toy("capture", provisional=True), Toy("final")
    memo, decide, hook = PlanMemo(), Decider(provisional, final), Hook()
    assert memo.plan("k", decide, True, hook) is provisional  # a new key is decided even in capture
    assert memo.plan("k", decide, True, hook) is provisional  # in capture, the plan made before stands
    assert memo.plan("k", decide, False, hook) is final
    assert memo.plan("k", decide, True, hook) is final
    assert hook.calls == [(None, provisional), (provisional, final)]


def test_a_finished_build_is_not_picked_up_during_capture():
    waiting, built = Toy("waiting", pending=finished()), Toy("built")
    memo, decide = PlanMemo(), Decider(waiting, built)
    assert memo.plan("k", decide, False) is waiting
    assert memo.plan("k", decide, True) is waiting
    assert memo.plan("k", decide, False) is built


def test_the_change_hook_is_called_once_per_decision():
    plans = [Toy(str(i), provisional=True) for i in range(3)] + [Toy("last")]
    memo, decide, hook = PlanMemo(), Decider(*plans), Hook()
    for _ in range(10):
        memo.plan("k", decide, False, hook)
    assert hook.calls == list(zip([None, *plans[:3]], plans))


def test_a_decision_that_raises_keeps_nothing_and_logs_nothing():
    memo, hook = PlanMemo(), Hook()

    def refuse(before):
        raise FallbackError("no")

    with pytest.raises(FallbackError):
        memo.plan("k", refuse, False, hook)
    assert memo.peek("k") is None and not hook.calls and not memo.plans()


def test_peek_decides_nothing():
    memo, decide = PlanMemo(), Decider(Toy("a", provisional=True))
    assert memo.peek("k") is None and decide.befores == []
    plan = memo.plan("k", decide, False)
    assert memo.peek("k") is plan  # stale or not, as kept


def test_plan_memos_keeps_one_memo_per_owner_and_drops_it_with_the_owner():
    class Owner:
        pass

    memos, a, b = PlanMemos(), Owner(), Owner()
    assert memos.of(a) is memos.of(a) and memos.of(a) is not memos.of(b)
    memos.of(a).plan("k", Decider(Toy("a")), False)
    assert memos.of(b).plans() == [] and memos.of(a).plans() == [Toy("a")]
    dropped = weakref.ref(memos.of(a))
    del a
    gc.collect()
    assert dropped() is None and memos.of(b).plans() == []


# ---- the three kinds of plan ------------------------------------------------------------

def test_each_kind_of_plan_says_when_it_is_stale():
    build = Future()
    assert not Plan("torch", pending=build).stale and Plan("torch", provisional=True).stale
    assert not WgradPlan(None, "r", pending=build).stale and WgradPlan(None, "r", provisional=True).stale
    build.set_result(None)
    assert Plan("torch", pending=build).stale and WgradPlan(None, "r", pending=build).stale
    assert not Plan("generated").stale and not WgradPlan(None, "r").stale
    # The phase split holds no future (its phase convolutions' plans do): decided again on each call.
    assert PhasesPlan((), torch=True, pending=True).stale and PhasesPlan((), provisional=True).stale
    assert not PhasesPlan((), torch=True).stale and not PhasesPlan(()).stale


def test_the_forward_memo_lives_in_its_dispatcher_and_logs_a_decision_once(tmp_path, caplog):
    dispatcher = Dispatcher(KernelCache(tmp_path))
    x, w = torch.randn(1, 2, 4, 5, 6), torch.randn(3, 2, 3, 3, 3)
    with caplog.at_level(logging.INFO, logger="conv3d_codegen"):
        plans = [dispatcher.plan(x, w, None, 1, 0, 1, 1) for _ in range(3)]
    assert plans[0] is plans[1] is plans[2] and dispatcher.plans() == [plans[0]]
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # said once (INFO: CPU tensors)
    assert dispatcher.decided(x, w, None, 1, 0, 1, 1) is plans[0]
    with strict():
        assert dispatcher.decided(x, w, None, 1, 0, 1, 1) is None
        with pytest.raises(FallbackError, match="input is on cpu"):
            dispatcher.plan(x, w, None, 1, 0, 1, 1)


def test_the_wgrad_memo_is_per_dispatcher_logs_once_and_goes_with_its_dispatcher(tmp_path, caplog):
    spec = ConvSpec.from_text("3x3x3 --cin 2 --cout 3")
    x, grad_out = torch.randn(1, 2, 4, 5, 6), torch.randn(1, 3, 2, 3, 4)
    first, second = Dispatcher(KernelCache(tmp_path)), Dispatcher(KernelCache(tmp_path))
    with caplog.at_level(logging.INFO, logger="conv3d_codegen"):
        for _ in range(3):
            weight_grad(first, spec, grad_out, x)
        weight_grad(second, spec, grad_out, x)
    said = [r for r in caplog.records if r.getMessage().startswith("conv3d wgrad")]
    assert [r.levelno for r in said] == [logging.WARNING] * 2  # once for each dispatcher
    assert [p.reason for p in _wgrad_plans.of(first).plans()] == ["input is on cpu"]
    with strict(), pytest.raises(FallbackError, match="wgrad of"):
        weight_grad(first, spec, grad_out, x)
    memo = weakref.ref(_wgrad_plans.of(first))
    del first
    gc.collect()
    assert memo() is None and len(_wgrad_plans.of(second).plans()) == 1


# ---- what a kernel plan loads: the autotuner's filter --------------------------------------

def test_the_candidate_filter_drops_tiles_wider_than_the_output():
    spec = ConvSpec.from_text("3x3x3 --cin 4 --cout 8")
    tiles = Tiles(cot=4, wt=8, block=128, cic=4)
    assert tiles.problem(spec) is None
    assert Tuner.candidate_problem(spec, tiles, (1, 4, 10, 10, 10)) is None  # ow 8
    assert Tuner.candidate_problem(spec, tiles, (1, 4, 10, 10, 9)) == "output width 7 < wt"
    bad = Tiles(cot=3, wt=4, block=128, cic=4)  # 3 does not divide 8 output channels
    assert Tuner.candidate_problem(spec, bad, (1, 4, 10, 10, 102)) == bad.problem(spec) is not None
