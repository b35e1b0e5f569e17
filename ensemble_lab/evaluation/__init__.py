"""Evaluation shared by all methods: metrics, the UncertaintyEvalMixin, result files."""

from ensemble_lab.evaluation.mixin import UncertaintyEvalMixin

__all__ = ["UncertaintyEvalMixin"]
