"""BatchEnsemble's 2-D convolution (Wen, Tran, Ba; ICLR 2020): a shared kernel, rank-k fast weights per member."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.conv_args import IntOrPair, as_pair
from ensemble_lab.nn.ensemble_conv import channels_to_members, members_to_channels
from ensemble_lab.nn.fast_weights import FastWeightLayer, FastWeights
from ensemble_lab.nn.members import rows_per_member
from ensemble_lab.nn.scaled_conv import scaled_input_conv2d

PERTURBATIONS = ("channel", "kernel")


class BatchConv2d(FastWeightLayer):
    """A convolution shared by M members, each perturbed by fast weights.

    Member i uses W_i = W ∘ F_i, F_i = Σ_k s_ik r_ikᵀ, and its own bias b_i. ``perturbation``
    says what r runs over:

    - "channel" (the paper's): input channels, F_i the same at every kernel position. At rank 1
      it commutes with the convolution, conv(x, W_i) = conv(x ∘ r_i, W) ∘ s_i, so all members
      run as one convolution over all rows with no member weights built.
    - "kernel": input channel × kernel position, which cannot be folded into the input.

    Otherwise (kernel-wise, or rank > 1) the M member kernels are built and run as one grouped
    convolution (groups = M) over channel-stacked feature maps.
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
        fast_weights: FastWeights | None = None,
        perturbation: str = "channel",
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
            fast_weights: rank, init and training of r and s (default: rank 1, r, s ~ N(1, 0.5)).
            perturbation: "channel" (r over input channels) or "kernel" (r over input channels × kernel positions).
        """
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ConfigError(f"--model.perturbation {perturbation!r} is not known; allowed: {', '.join(PERTURBATIONS)}")
        kh, kw = as_pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.perturbation = perturbation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        r_shape = (in_channels,) if perturbation == "channel" else (in_channels, kh, kw)
        self._make_fast_weights(num_members, r_shape, out_channels, bias, fast_weights or FastWeights())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and bias as nn.Conv2d; fast weights as ``fast_weights`` says."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._reset_fast_weights(bias_bound=1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1]))

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_channels, H, W) member-major rows -> (M*B, out_channels, H', W')."""
        m, b = self.num_members, rows_per_member(x.shape[0], self.num_members)
        if self.fast.rank == 1 and self.perturbation == "channel":
            r, s = self.fast_factors()  # (M, 1, Cin), (M, 1, Cout)

            def conv(rows: Tensor, scale: Tensor, weight: Tensor) -> Tensor:  # (n, B, Cin, H, W) -> (n, B, Cout, H', W')
                return scaled_input_conv2d(rows, scale, weight, self.stride, self.padding)  # conv(x ∘ r, W), x kept for backward

            rows = x.view(m, b, *x.shape[1:])  # (M, B, Cin, H, W)
            # one convolution with the shared weight (two under gradient blocking)
            y = self._apply_shared(conv, rows, r.view(m, 1, self.in_channels, 1, 1))
            # Cast to the conv's dtype: under autocast a float32 s would promote the output back to float32.
            y = y * s.view(m, 1, self.out_channels, 1, 1).to(y.dtype)
        else:
            weights = self.member_weights().flatten(0, 1)  # (M*Cout, Cin, kh, kw)
            # groups=M: output channels [i*Cout, (i+1)*Cout) see only member i's input channels.
            y = F.conv2d(members_to_channels(x, m), weights, None, self.stride, self.padding, groups=m)  # (B, M*Cout, H', W')
            y = channels_to_members(y, m)  # (M*B, Cout, H', W')
            y = y.view(m, b, *y.shape[1:])  # (M, B, Cout, H', W')
        return self._add_bias(y).reshape(m * b, *y.shape[2:])  # (M*B, Cout, H', W')

    def _broadcast(self, f: Tensor) -> Tensor:
        m = f.shape[0]
        if self.perturbation == "channel":
            return f.view(m, self.out_channels, self.in_channels, 1, 1)  # the same at every kernel position
        return f.view(m, self.out_channels, self.in_channels, *self.kernel_size)

    def _weight_sq(self) -> Tensor:
        weight_sq = self.weight.detach().to(torch.float64).square()  # (out, in, kh, kw)
        # channel-wise, F_i is the same at every kernel position, so the positions sum inside W∘W first
        return weight_sq.sum((2, 3)) if self.perturbation == "channel" else weight_sq.flatten(1)  # (out, in_flat)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_members={self.num_members}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, rank={self.fast.rank}, perturbation={self.perturbation}"
        )
