"""Whole models: swap every nn.Conv3d for conv3d_codegen.Conv3d, and find every conv a model
runs (spec and input shape) from one forward pass on the meta device, without a GPU."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .nn import PRECISIONS, Conv3d
from .spec import ConvSpec


def convert(model: torch.nn.Module, precision: str = "ieee") -> torch.nn.Module:
    """Make every torch.nn.Conv3d in `model` a conv3d_codegen.Conv3d, in place, and return the
    model. Parameters, buffers, hooks and device stay as they are (the module's class is
    swapped: Conv3d adds nothing but `precision` to nn.Conv3d)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for module in model.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = Conv3d
            module.precision = precision
    return model


@dataclass(frozen=True)
class ConvCall:
    module: str                                  # the module's name in the model
    spec: ConvSpec
    input_shape: tuple[int, int, int, int, int]


def conv_calls(model: torch.nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               ) -> list[ConvCall]:
    """Every Conv3d call of one forward pass on `input_shape`, run on the meta device (no data,
    no GPU). The model is moved to the meta device; pass a copy if it holds weights you need."""
    model = convert(model).to(device="meta", dtype=dtype)
    calls: list[ConvCall] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, Conv3d):
            def record(mod, args, name=name):
                x = args[0] if args[0].dim() == 5 else args[0].unsqueeze(0)
                if mod.padding_mode != "zeros":
                    x = torch.nn.functional.pad(x, mod._reversed_padding_repeated_twice, mode="constant")
                calls.append(ConvCall(name, mod.spec, tuple(x.shape)))
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(torch.empty(input_shape, device="meta", dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def load_factory(path: str) -> Callable[[], torch.nn.Module]:
    """'package.module:factory' -> the callable that makes the model."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a model is given as package.module:factory, got {path!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model factory {path!r}: {err}") from None
    if not callable(factory):
        raise ValueError(f"{path!r} is not callable")
    return factory
