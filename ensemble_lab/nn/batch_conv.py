"""BatchEnsemble's rank-1 2-D convolution, channel-wise (Wen, Tran, Ba; ICLR 2020)."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.batch_linear import FAST_WEIGHT_INITS, init_fast_weights
from ensemble_lab.nn.conv_args import IntOrPair, as_pair
from ensemble_lab.nn.members import check_num_members, rows_per_member


class BatchConv2d(nn.Module):
    """A convolution shared by M members, each perturbed channel-wise by a rank-1 fast weight.

    Member i uses W_i = W ∘ (s_i r_iᵀ), the outer product broadcast over kernel positions, and its
    own bias b_i. Since the perturbation is per channel, it commutes with the convolution:
    conv(x, W_i) = conv(x ∘ r_i, W) ∘ s_i, so all members run as one convolution over all rows.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        num_members: int,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        bias: bool = False,
        fast_weight_init: str = "normal",
        fast_weight_std: float = 0.5,
    ) -> None:
        """
        Args:
            in_channels: channels of each input row.
            out_channels: channels of each output row.
            kernel_size: height and width of the kernel (int or pair).
            num_members: number of ensemble members M.
            stride: stride of the convolution (int or pair).
            padding: zero padding on each side (int or pair).
            bias: give every member its own bias vector (out_channels,).
            fast_weight_init: "normal" draws r, s ~ N(1, fast_weight_std); "random_sign" draws ±1.
            fast_weight_std: standard deviation of the "normal" fast-weight init.
        """
        super().__init__()
        check_num_members(num_members)
        if fast_weight_init not in FAST_WEIGHT_INITS:
            raise ConfigError(
                f"fast_weight_init={fast_weight_init!r} is not known; allowed: {', '.join(FAST_WEIGHT_INITS)}"
            )
        kh, kw = as_pair(kernel_size)
        self.in_channels, self.out_channels, self.num_members = in_channels, out_channels, num_members
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.fast_weight_init, self.fast_weight_std = fast_weight_init, fast_weight_std
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self.r = nn.Parameter(torch.empty(num_members, in_channels))
        self.s = nn.Parameter(torch.empty(num_members, out_channels))
        self.bias = nn.Parameter(torch.empty(num_members, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and bias as nn.Conv2d; fast weights from ``fast_weight_init``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        init_fast_weights(self.r, self.fast_weight_init, self.fast_weight_std)
        init_fast_weights(self.s, self.fast_weight_init, self.fast_weight_std)
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_channels, H, W) member-major rows -> (M*B, out_channels, H', W')."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        h, w = x.shape[-2:]
        r = self.r.view(m, 1, self.in_channels, 1, 1)  # (M, 1, Cin, 1, 1): broadcast over rows, pixels
        x = x.view(m, b, self.in_channels, h, w) * r  # (M, B, Cin, H, W)
        # One convolution with the shared weight over every member's rows.
        x = x.reshape(m * b, self.in_channels, h, w)  # (M*B, Cin, H, W)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding)  # (M*B, Cout, H', W')
        y = y.view(m, b, *y.shape[1:])  # (M, B, Cout, H', W')
        # Cast to the conv's dtype: under autocast a float32 s would promote the output back to float32.
        y = y * self.s.view(m, 1, self.out_channels, 1, 1).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.view(m, 1, self.out_channels, 1, 1).to(y.dtype)
        return y.reshape(m * b, *y.shape[2:])  # (M*B, Cout, H', W')

    def member_weight(self, i: int) -> Tensor:
        """Member i's effective weight W ∘ (s_i r_iᵀ), shaped like ``.weight`` (out, in, kh, kw)."""
        if not -self.num_members <= i < self.num_members:
            raise IndexError(f"member {i} out of range for {self.num_members} members")
        scale = torch.outer(self.s[i], self.r[i])  # (Cout, Cin), same for every kernel position
        return self.weight * scale[:, :, None, None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_members={self.num_members}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )
