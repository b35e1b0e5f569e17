"""Arguments the per-member convolutions share: a size given as one int or as a (height, width) pair."""

from collections.abc import Sequence

IntOrPair = int | tuple[int, int]


def as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; a pair (tuple or list, as a config gives it) -> that pair as a tuple."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)
