"""The one place that chooses a task's evaluation: ``EVALUATIONS``, keyed by the task's name.

The tasks (metrics/tasks.py) sit in a lower layer and know nothing of the evaluation, so the evaluation keeps the
table. A new task adds its TaskEvaluation subclass here.
"""

from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.classification_eval import ClassificationEvaluation
from ensemble_lab.evaluation.regression_sets import RegressionEvaluation
from ensemble_lab.evaluation.task_evaluation import TaskEvaluation
from ensemble_lab.metrics.tasks import Task

#: ``{task name: its evaluation}``
EVALUATIONS: dict[str, type[TaskEvaluation]] = {"classification": ClassificationEvaluation, "regression": RegressionEvaluation}


def evaluation_for(task: Task) -> TaskEvaluation:
    """A new evaluation of ``task``'s member outputs; a one-line ConfigError for a task no evaluation serves."""
    name = getattr(task, "name", type(task).__name__)
    evaluation = EVALUATIONS.get(name)
    if evaluation is None:
        raise ConfigError(
            f"no evaluation for the task {name!r} ({type(task).__name__}): ensemble-lab evaluates {', '.join(EVALUATIONS)} models "
            "(add a TaskEvaluation to ensemble_lab.evaluation.by_task.EVALUATIONS)"
        )
    return evaluation(task)
