"""What a model predicts: its task (linked from the datamodule) and the regression head's options.

The datamodule says which task its targets are for (``TabularDataModule.task``; every image datamodule is
classification); the CLI links it to ``--model.task`` together with the size of the output, so a config
never names the task. The regression head's own choices are ``--model.regression.*``.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.tasks import ClassificationTask, RegressionTask, Task

#: the tasks a model can have
TASKS = ("classification", "regression")
#: ``--model.regression.head`` -> the variance parameterisation of RegressionTask
HEADS = {"softplus": "softplus", "log_variance": "log"}


@dataclass
class RegressionOptions:
    """The regression head and loss (used only when the datamodule's task is regression).

    Args:
        head: how each member's variance output becomes a variance: "softplus" (softplus(v) + 1e-6) or
            "log_variance" (exp(v) + 1e-6).
        loss: "nll" (Gaussian NLL per member), "beta_nll" (β-NLL, Seitzer et al. 2022) or "mse" (squared error
            for the means, the variance fitted to the squared residuals).
        beta: β of "beta_nll", in [0, 1] (0: the NLL; 1: the means get the MSE's gradient).
    """

    head: Literal["softplus", "log_variance"] = "softplus"
    loss: Literal["nll", "beta_nll", "mse"] = "nll"
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"--model.regression.head {self.head!r} is not known; allowed: {', '.join(HEADS)}")

    def record(self) -> dict[str, Any]:
        """The options as plain values (what a checkpoint's hyper-parameters hold)."""
        return asdict(self)


def regression_from(options: RegressionOptions | dict[str, Any] | None) -> RegressionOptions:
    """The options object of ``options`` (a recorded dict from a checkpoint, or None: the defaults)."""
    if options is None:
        return RegressionOptions()
    return options if isinstance(options, RegressionOptions) else RegressionOptions(**options)


def build_task(
    task: str, regression: RegressionOptions, target_mean: Sequence[float] | None = None, target_std: Sequence[float] | None = None
) -> Task:
    """The task object of a model: ClassificationTask, or RegressionTask with ``regression``'s head and loss and
    the training targets' ``target_mean`` / ``target_std`` (None: predictions stay in standardised units)."""
    if task == "classification":
        return ClassificationTask()
    if task == "regression":
        variance = HEADS[regression.head]
        return RegressionTask(regression.loss, regression.beta, variance, target_mean=target_mean, target_std=target_std)
    raise ConfigError(f"--model.task {task!r} is not known; allowed: {', '.join(TASKS)}")


def datamodule_task(datamodule: Any) -> str:
    """The task of a datamodule's targets: its ``task`` attribute, "classification" when it has none."""
    return str(getattr(datamodule, "task", "classification"))


def datamodule_outputs(datamodule: Any) -> int:
    """What ``--model.num_classes`` gets from a datamodule: its classes, or for regression its targets D."""
    return int(datamodule.num_targets if datamodule_task(datamodule) == "regression" else datamodule.num_classes)
