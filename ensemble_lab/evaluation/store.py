"""A torchmetrics state that collects member outputs of a whole evaluation set.

Every metric of ensemble-lab (ECE, AUROC, diversity) needs the complete set, so the store keeps
(M, N, C) member logits (probabilities = their softmax; max logit and energy need the logits themselves) on the device and, under DDP, gathers them from all ranks. The dataset
index travels with each row so that samples duplicated by DistributedSampler padding are dropped.
"""

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class PredictionStore(Metric):
    """Collects member logits (M, B, C) (or, with ``logits=False``, probabilities), targets (B,) and dataset indices (B,)."""

    full_state_update = False
    # metric states, declared as torchmetrics' own list states are (under DDP, compute sees them
    # gathered into one tensor; dim_zero_cat and len take either)
    probs: list[Tensor]
    targets: list[Tensor]
    indices: list[Tensor]

    def __init__(self, logits: bool = True) -> None:
        """An empty store; ``update`` adds batches, ``compute`` gathers them across ranks.

        Args:
            logits: the batches are member logits (``compute`` returns their softmax); False: already probabilities.
        """
        super().__init__()
        self.holds_logits = logits
        # member-major probabilities are stored sample-major (B, M, C) so "cat" joins along dim 0
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, member_outputs: Tensor, targets: Tensor, indices: Tensor) -> None:
        """Add a batch: member logits (or probabilities, see ``__init__``) (M, B, C), targets (B,), indices (B,)."""
        self.probs.append(member_outputs.detach().transpose(0, 1).float())  # (B, M, C)
        self.targets.append(targets.detach())
        self.indices.append(indices.detach())

    def compute(self) -> tuple[Tensor, Tensor]:
        """Member probabilities (M, N, C) and targets (N,), one row per dataset index, in index order (torchmetrics
        gathers the states of every rank before calling this)."""
        outputs, targets = self._in_index_order()
        return (torch.softmax(outputs, dim=-1) if self.holds_logits else outputs), targets

    def compute_outputs(self) -> tuple[Tensor, Tensor]:
        """What was stored, (M, N, C) member logits (or probabilities), and targets (N,), in dataset index order,
        gathered from every rank under DDP as ``compute`` is (call it on every rank)."""
        with self.sync_context():  # torchmetrics syncs only inside compute(); here it is done by hand
            return self._in_index_order()

    def _in_index_order(self) -> tuple[Tensor, Tensor]:
        probs, targets, indices = (dim_zero_cat(s) for s in (self.probs, self.targets, self.indices))
        order = torch.argsort(indices, stable=True)
        indices, probs, targets = indices[order], probs[order], targets[order]
        first = torch.ones_like(indices, dtype=torch.bool)
        first[1:] = indices[1:] != indices[:-1]  # DistributedSampler pads by repeating samples
        return probs[first].transpose(0, 1).contiguous(), targets[first]  # (M, N, C), (N,)

    @property
    def is_empty(self) -> bool:
        """True before the first update (e.g. when no batch was run)."""
        return len(self.probs) == 0
