"""The Lightning side of evaluation, shared by every method: ``mixin`` (UncertaintyEvalMixin: validation
and test metrics from the members' outputs, calibration, the files a test writes), ``sets`` (the named test
sets and when to evaluate them), ``store`` (the predictions kept for the figures and results),
``member_networks`` (one member's plain network, and interpolating between two). The math is in
``ensemble_lab.metrics``, the drawing in ``ensemble_lab.figures``."""

from ensemble_lab.evaluation.mixin import UncertaintyEvalMixin

__all__ = ["UncertaintyEvalMixin"]
