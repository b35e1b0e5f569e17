"""M independent convolutions and batch norms over member-major rows (the Deep Ensemble layers).

Both layers move the members from the row axis into the channel axis, (M*B, C, H, W) ->
(B, M*C, H, W), so that one grouped convolution (groups=M) or one batch norm over M*C channels
computes every member at once. On CPU for ResNet-18 shapes, the grouped convolution ran as fast
as torch.vmap over F.conv2d (which lowers to the same kernel) and 2-3x faster than unfold + bmm
on the 3x3 convs (unfold + bmm only won on the 1x1 shortcuts, a small share of the work).
With ``channel_stacked=True`` a layer takes and returns (B, M*C, H, W) directly; a network of such
layers (the Deep Ensemble ResNet) converts once at entry and once at exit (MembersToChannels,
ChannelsToMembers), which made its CPU training step 1.4x faster than converting in every layer.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.conv_args import IntOrPair, as_pair
from ensemble_lab.nn.members import check_num_members, gram_of_rows, rows_per_member


def members_to_channels(x: Tensor, num_members: int) -> Tensor:
    """(M*B, C, H, W) member-major rows -> (B, M*C, H, W), member m in channels [m*C, (m+1)*C)."""
    b = rows_per_member(x.shape[0], num_members)
    x = x.view(num_members, b, *x.shape[1:])  # (M, B, C, H, W)
    return x.transpose(0, 1).reshape(b, -1, *x.shape[-2:])  # (B, M*C, H, W)


def channels_to_members(x: Tensor, num_members: int) -> Tensor:
    """(B, M*C, H, W) -> (M*B, C, H, W) member-major rows; inverse of ``members_to_channels``."""
    b, mc, h, w = x.shape
    x = x.view(b, num_members, mc // num_members, h, w)  # (B, M, C, H, W)
    return x.transpose(0, 1).reshape(num_members * b, mc // num_members, h, w)  # (M*B, C, H, W)


class MembersToChannels(nn.Module):
    """(M*B, C, H, W) member-major rows -> (B, M*C, H, W) channel-stacked feature maps (one copy)."""

    def __init__(self, num_members: int) -> None:
        """``num_members``: M, the number of member blocks the rows (and then the channels) hold."""
        super().__init__()
        self.num_members = num_members

    def forward(self, x: Tensor) -> Tensor:
        return members_to_channels(x, self.num_members)


class ChannelsToMembers(MembersToChannels):
    """(B, M*C, H, W) channel-stacked feature maps -> (M*B, C, H, W) member-major rows (one copy)."""

    def forward(self, x: Tensor) -> Tensor:
        return channels_to_members(x, self.num_members)


def _flat(t: Tensor | None) -> Tensor | None:
    """(M, C) -> (M*C,) as a view, so F.batch_norm's in-place running-stat updates reach the buffer."""
    return None if t is None else t.view(-1)


class EnsembleConv2d(nn.Module):
    """M independent 2-D convolutions; member i uses ``weight[i]`` (and ``bias[i]``) on its rows."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        num_members: int,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        bias: bool = False,
        channel_stacked: bool = False,
        groups: int = 1,
        shared_input: bool = False,
    ) -> None:
        """
        Args:
            in_channels: channels of each input row.
            out_channels: channels of each output row.
            kernel_size: height and width of the kernel (int or pair).
            num_members: number of independent members M.
            stride: stride of the convolution (int or pair).
            padding: zero padding on each side (int or pair).
            bias: give every member a bias vector (out_channels,).
            channel_stacked: take and return (B, M*C, H, W) feature maps (member m in channels
                [m*C, (m+1)*C)) instead of member-major rows, so a network of these layers converts
                its layout once at entry and once at exit instead of twice per layer.
            groups: groups within each member, as nn.Conv2d's ``groups`` (Packed-Ensembles' γ): member
                i is ``nn.Conv2d(in_channels, out_channels, groups=groups)`` holding ``weight[i]``
                (out_channels, in_channels / groups, kh, kw); both channel counts must divide by it.
                1 (the default) is a dense conv per member; the grouped conv runs M * groups groups.
            shared_input: every member reads the same untiled batch (B, in_channels, H, W), as a network's
                first layer reads the images: one dense convolution with M * out_channels filters runs
                once, member m's output in channels [m*out_channels, (m+1)*out_channels), instead of M
                copies of the batch through a grouped one (same weights, same values). Needs groups 1.
        """
        super().__init__()
        check_num_members(num_members)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ConfigError(f"groups must be an integer >= 1, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"EnsembleConv2d({in_channels}, {out_channels}, groups={groups}): both channel counts must divide by groups"
            )
        if shared_input and groups != 1:
            raise ConfigError(f"EnsembleConv2d(shared_input=True) reads the whole input in every member: groups must be 1, got {groups}")
        kh, kw = as_pair(kernel_size)
        self.shared_input = shared_input
        self.in_channels, self.out_channels, self.num_members = in_channels, out_channels, num_members
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.channel_stacked, self.groups = channel_stacked, groups
        self.weight = nn.Parameter(torch.empty(num_members, out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(num_members, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each member drawn independently from nn.Conv2d's default init."""
        for i in range(self.num_members):  # init only: each slice gets nn.Conv2d's fan-in
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, in_channels, H, W) member-major rows -> (M*B, out_channels, H', W');
        channel-stacked: (B, M*in_channels, H, W) -> (B, M*out_channels, H', W');
        shared_input: (B, in_channels, H, W) -> either of those outputs."""
        m = self.num_members
        weight = self.weight.flatten(0, 1)  # (M*Cout, Cin/groups, kh, kw)
        bias = None if self.bias is None else self.bias.flatten()  # (M*Cout,)
        if self.shared_input:  # every filter of every member reads all of the one batch
            y = F.conv2d(x, weight, bias, self.stride, self.padding)  # (B, M*Cout, H', W')
            return y if self.channel_stacked else channels_to_members(y, m)
        if not self.channel_stacked:
            x = members_to_channels(x, m)  # (B, M*Cin, H, W)
        # groups=M: output channels [m*Cout, (m+1)*Cout) see only input channels [m*Cin, (m+1)*Cin);
        # M*groups: each member's channels split again into its own ``groups`` blocks, as nn.Conv2d's.
        y = F.conv2d(x, weight, bias, self.stride, self.padding, groups=m * self.groups)  # (B, M*Cout, H', W')
        return y if self.channel_stacked else channels_to_members(y, m)  # (M*B, Cout, H', W')

    def member_weight(self, i: int) -> Tensor:
        """Member i's weight (out_channels, in_channels / groups, kh, kw)."""
        return self.weight[i]

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.Conv2d(groups=self.groups) would hold it: ``weight`` (and ``bias``) slice i, detached."""
        return {name: t[i].detach() for name, t in (("weight", self.weight), ("bias", self.bias)) if t is not None}

    def member_gram(self) -> Tensor:
        """G_ij = ⟨θ_i, θ_j⟩ (M, M) float64 of the members' own kernels and biases."""
        return gram_of_rows(self.weight, self.bias)

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: weight and bias."""
        return [p for p in (self.weight, self.bias) if p is not None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_members={self.num_members}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}" + (f", groups={self.groups}" if self.groups != 1 else "")
            + (", shared_input=True" if self.shared_input else "")
        )


class EnsembleBatchNorm2d(nn.Module):
    """M independent nn.BatchNorm2d: per-member batch statistics, running statistics and affine.

    Parameters and buffers have shape (M, C); row m holds what member m's own BatchNorm2d would.
    """

    # buffers, None when not track_running_stats (as nn.BatchNorm2d)
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
        num_members: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        channel_stacked: bool = False,
    ) -> None:
        """
        Args:
            num_features: channels C of each row.
            num_members: number of independent members M.
            eps: added to the variance for numerical stability.
            momentum: weight of the new batch in the running statistics; None for a cumulative average.
            affine: learn a per-member scale and shift.
            track_running_stats: keep running statistics for eval; if False, eval uses batch statistics.
            channel_stacked: take and return (B, M*C, H, W) feature maps, as EnsembleConv2d's option.
        """
        super().__init__()
        check_num_members(num_members)
        self.num_features, self.num_members = num_features, num_members
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.channel_stacked = channel_stacked
        shape = (num_members, num_features)
        self.weight = nn.Parameter(torch.ones(shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(shape)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics and affine parameters back to nn.BatchNorm2d's initial values."""
        self.reset_running_stats()
        if self.affine:
            assert self.weight is not None and self.bias is not None
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(M*B, C, H, W) member-major rows -> (M*B, C, H, W), each member normalised on its own
        (channel-stacked: (B, M*C, H, W) -> (B, M*C, H, W))."""
        m = self.num_members
        update = self.training and self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if update:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or not self.track_running_stats
        y = F.batch_norm(
            x if self.channel_stacked else members_to_channels(x, m),  # (B, M*C, H, W): stats per member and channel
            _flat(self.running_mean),
            _flat(self.running_var),
            _flat(self.weight),
            _flat(self.bias),
            use_batch_stats,
            momentum,
            self.eps,
        )
        return y if self.channel_stacked else channels_to_members(y, m)

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i as a plain nn.BatchNorm2d with the same options would hold it (detached): affine ``weight``
        and ``bias`` row i, ``running_mean`` / ``running_var`` row i and the shared ``num_batches_tracked``."""
        rows = (("weight", self.weight), ("bias", self.bias), ("running_mean", self.running_mean), ("running_var", self.running_var))
        state = {name: t[i].detach() for name, t in rows if t is not None}
        if self.num_batches_tracked is not None:
            state["num_batches_tracked"] = self.num_batches_tracked.detach()
        return state

    def member_parameters(self) -> list[Tensor]:
        """The stored tensors whose row i is member i's own: the affine scale and shift (no ``member_gram``:
        norm layers are left out of the effective weight cosine, see metrics/weight_space.py)."""
        return [p for p in (self.weight, self.bias) if p is not None]

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_members={self.num_members}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
