"""SDPA backend selection scoped to chosen networks (the DiT/UNet and the motion layers), not the step.

``torch.nn.attention.sdpa_kernel`` around a whole training step would also force the backend on the
frozen VAE, whose attention head dims (384/512) flash/cuDNN kernels reject. :func:`scope_attention_backend`
instead enters the context around every attention layer of the given modules (a forward pre-hook
enters it, a forward hook with ``always_call=True`` leaves it), so it also holds when a checkpointed
block is recomputed in backward, and nothing else sees it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionBackend = Literal["auto", "flash", "efficient", "cudnn", "math"]

_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def is_attention_layer(module: nn.Module) -> bool:
    """diffusers attention layers (SVD ``Attention``, ``WanAttention``) and ``nn.MultiheadAttention``."""

    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return isinstance(module, (Attention, AttentionModuleMixin, nn.MultiheadAttention))


def scope_attention_backend(modules: Iterable[nn.Module], backend: AttentionBackend) -> int:
    """Run every attention layer under ``modules`` with ``backend`` only; returns how many layers.

    ``"auto"`` leaves PyTorch's choice (no hooks). A layer is scoped once even if reached twice.
    """

    if backend == "auto":
        return 0
    if backend not in _BACKENDS:
        raise ValueError(f"attention_backend must be one of auto/{'/'.join(_BACKENDS)}, got {backend!r}")
    seen: set[int] = set()
    for root in modules:
        for layer in root.modules():
            if id(layer) in seen or not is_attention_layer(layer):
                continue
            seen.add(id(layer))
            stack: list = []

            def enter(_module, _args, stack=stack):
                ctx = sdpa_kernel([_BACKENDS[backend]])
                ctx.__enter__()
                stack.append(ctx)

            def leave(_module, _args, _out, stack=stack):
                if stack:
                    stack.pop().__exit__(None, None, None)

            layer.register_forward_pre_hook(enter)
            layer.register_forward_hook(leave, always_call=True)
    return len(seen)
