"""What one training step's loss sees: the members' logits, their labels, and which batch image each row is."""

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class TrainingBatch:
    """The result of ``EnsembleModule.training_batch(x, y)``: everything the loss, distillation and
    repulsion need from one training step, returned together so that no method keeps state between calls.

    Attributes:
        logits: the members' training logits, (M, N, C) (M = 1 for a method that trains one sample a step).
        targets: their labels: (N,) when every member trained on the same N rows, or (M, N) when member m
            trained on its own rows (row m: their labels).
        rows: which image of the batch each training row is, int64: (N,) or (M, N), as ``targets``
            (``rows[m, j] = i`` when member m's j-th row is batch image i; a split batch, MIMO's draws).
    """

    logits: Tensor
    targets: Tensor
    rows: Tensor
