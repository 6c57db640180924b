"""conv3d-codegen: CUDA kernels generated for each torch.nn.Conv3d configuration.

    from conv3d_codegen import Conv3d        # drop-in for torch.nn.Conv3d
    from conv3d_codegen import conv3d        # drop-in for torch.nn.functional.conv3d

    model = conv3d_codegen.convert(model)    # every nn.Conv3d of a model, weights kept
    print(conv3d_codegen.explain(model))     # what ran for each layer, and why

Data flow, one module each: spec (ConvSpec) -> render (CUDA source) -> build + cache
(shared library) -> kernel (ctypes launch) -> autotune + dispatch (which kernel, and why)
-> ops / nn -> models (whole models).
"""
__version__ = "0.1.0"

from .build import KernelBuildError
from .dispatch import FallbackError, explain, explain_call, strict, using
from .models import convert
from .nn import Conv3d
from .ops import conv3d
from .spec import ConvSpec

__all__ = ["Conv3d", "ConvSpec", "FallbackError", "KernelBuildError", "conv3d", "convert", "explain",
           "explain_call", "strict", "using"]
