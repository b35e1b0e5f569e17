"""Channels-last (NHWC) memory order for a network: what GPU convolutions prefer under bf16 / fp16.

Only the memory order changes, never a value or a shape: tensors keep their logical (N, C, H, W)
layout, so every ``view`` on member-major rows keeps working.
"""

import torch
from torch import Tensor, nn


def _inputs_to_channels_last(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: a 4-D first input becomes channels-last (one copy per call, before the stem)."""
    x = args[0] if args else None
    if isinstance(x, Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def use_channels_last(network: nn.Module) -> nn.Module:
    """Store every convolution kernel (a 4-D ``weight``) channels-last and convert 4-D inputs on entry; returns ``network``.

    Other 4-D parameters (BatchEnsemble's kernel-wise fast weights r, (M, Cin, kh, kw)) are no kernel
    and stay as they are. Higher-rank weights (DeepEnsemble's (M, Cout, Cin, kh, kw)) are left alone:
    their grouped convolution runs on a members-to-channels reshape that is NCHW anyway. Call it
    before the optimizer is built; moving the network to another device keeps the order.
    """
    with torch.no_grad():
        for name, param in network.named_parameters():
            if param.dim() == 4 and name.rsplit(".", 1)[-1] == "weight":
                param.data = param.data.contiguous(memory_format=torch.channels_last)
    network.register_forward_pre_hook(_inputs_to_channels_last)
    return network
