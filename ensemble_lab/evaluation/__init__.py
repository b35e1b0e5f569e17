"""The Lightning side of evaluation, shared by every method: ``mixin`` (UncertaintyEvalMixin: validation
and test metrics from the members' outputs, calibration, the files a test writes), ``task_evaluation`` (what
a task's outputs mean to those hooks: ``classification_eval``, ``regression_sets``; ``by_task`` chooses one per
task), ``sets`` (the named test
sets and when to evaluate them), ``store`` (the predictions kept for the figures and results),
``member_networks`` (one member's plain network, and interpolating between two), ``outputs``
(EvaluationOutputs: the callback that says what a test writes and records about its run). The math is in
``ensemble_lab.metrics``, the drawing in ``ensemble_lab.figures``."""

from ensemble_lab.evaluation.mixin import UncertaintyEvalMixin
from ensemble_lab.evaluation.outputs import EvaluationOptions, EvaluationOutputs, RunRecord

__all__ = ["EvaluationOptions", "EvaluationOutputs", "RunRecord", "UncertaintyEvalMixin"]
