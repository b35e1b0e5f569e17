"""Dropout that stays on at test time, for Monte Carlo Dropout."""

from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError


def check_dropout_p(p: float, option: str = "dropout") -> None:
    """Raise a ConfigError unless 0 <= p < 1."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{option} must be in [0, 1), got {p}")


class AlwaysOnDropout(nn.Dropout):
    """Element-wise dropout that ignores ``eval()``: every forward draws a fresh mask per row.

    Rows of a member-major batch get independent masks, so M tiled copies of a batch are M
    Monte Carlo samples computed in one forward pass.
    """

    def __init__(self, p: float = 0.1) -> None:
        """
        Args:
            p: probability of zeroing an element, in [0, 1).
        """
        check_dropout_p(p)
        super().__init__(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True)


class AlwaysOnDropout2d(nn.Dropout2d):
    """Channel-wise dropout that ignores ``eval()`` (a fresh channel mask per row and forward)."""

    def __init__(self, p: float = 0.1) -> None:
        """
        Args:
            p: probability of zeroing a channel, in [0, 1).
        """
        check_dropout_p(p)
        super().__init__(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout2d(x, self.p, training=True)
