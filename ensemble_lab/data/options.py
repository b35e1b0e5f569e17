"""Checks of datamodule options, in one place: each failure is a one-line ConfigError naming ``--data.<option>``."""

from collections.abc import Sequence

from ensemble_lab.errors import ConfigError


def check_at_least(option: str, value: int, minimum: int, note: str = "") -> None:
    """ConfigError unless the integer ``value`` of ``--data.<option>`` is >= ``minimum``; ``note`` ends the message."""
    if value < minimum:
        raise ConfigError(f"--data.{option} must be an integer >= {minimum}{note}, got {value}")


def check_val_size(val_size: int, train_size: int | None, where: str = "the training set") -> None:
    """ConfigError unless ``val_size`` leaves at least one image of ``train_size`` to train on (None: not known yet)."""
    check_at_least("val_size", val_size, 1, " (validation is held out of the training set, never the test set)")
    if train_size is not None and val_size >= train_size:
        raise ConfigError(
            f"--data.val_size must be between 1 and {train_size - 1} ({where} has {train_size:,} images, "
            f"at least one must be left to train on), got {val_size}"
        )


def check_choices(option: str, values: Sequence, allowed: Sequence, what: str) -> list:
    """``values`` of ``--data.<option>`` as a list (a lone value becomes a list of one); ConfigError if it
    is empty, repeats a value or holds one not in ``allowed``. ``what`` names one value in the error."""
    option = f"--data.{option}"
    values = [values] if isinstance(values, (str, int)) else list(values)
    if not values:
        raise ConfigError(f"{option} must name at least one {what}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{option}: unknown {what} {unknown[0]!r}; choose from {', '.join(map(str, allowed))}")
    repeated = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if repeated:
        raise ConfigError(f"{option} names {repeated[0]!r} twice; each {what} may appear once")
    return values
