"""How long a fit trains when its command sets no limit.

Lightning then trains for 1000 epochs without a word (``max_epochs`` None and ``max_steps`` -1), which
for a command like ``fit --model BatchEnsemble --data DigitsDataModule`` means hours of CPU time nobody
asked for. ensemble-lab trains for :data:`DEFAULT_MAX_EPOCHS` instead, records it in config.yaml like any
option, and says so in one line.
"""

from typing import Any

from lightning.pytorch.utilities import rank_zero_info

#: epochs a fit trains without --trainer.max_epochs, max_steps or max_time (the shipped digits recipes' length)
DEFAULT_MAX_EPOCHS = 30


def bound_training(config: Any, announce: bool = True) -> None:
    """Set ``trainer.max_epochs`` of a fit's ``config`` to :data:`DEFAULT_MAX_EPOCHS` when none of max_epochs,
    max_steps and max_time is given (-1 for max_epochs still means no limit); ``announce``: print one line saying so."""
    trainer = config.get("trainer")
    if trainer is None:
        return
    if trainer.get("max_epochs") is not None or trainer.get("max_steps") not in (None, -1) or trainer.get("max_time") is not None:
        return
    trainer["max_epochs"] = DEFAULT_MAX_EPOCHS
    if announce:
        rank_zero_info(
            f"ensemble-lab: no --trainer.max_epochs, max_steps or max_time given: training for {DEFAULT_MAX_EPOCHS} epochs "
            "(Lightning's default would be 1000); --trainer.max_epochs N sets another length, -1 none"
        )
