"""A method defined outside ensemble-lab and run by class path: the README's "Adding your own method".

    ensemble-lab fit --config configs/quickstart.yaml --model tests.custom_method_example.MyEnsemble
"""

import torch
from torch import Tensor

from ensemble_lab.methods import EnsembleModule
from ensemble_lab.nn import LayerFactory, batch_ensemble_layers


class MyEnsemble(EnsembleModule):
    """BatchEnsemble's rank-1 members, trained to disagree: cross-entropy minus λ × their mutual information."""

    def __init__(self, diversity: float = 0.1, fast_weight_std: float = 0.5, **kwargs) -> None:
        """
        Args:
            diversity: weight λ of the members' mutual information subtracted from the loss (0: BatchEnsemble's loss).
            fast_weight_std: the fast weights r, s start as N(1, fast_weight_std).
        """
        self.diversity, self.fast_weight_std = diversity, fast_weight_std  # before super(): it calls layer_factory()
        super().__init__(**kwargs)

    def layer_factory(self) -> LayerFactory:
        return batch_ensemble_layers(self.num_members, fast_weight_std=self.fast_weight_std)

    def training_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        probs = logits.softmax(-1)  # (M, B, C)
        entropy = lambda p: torch.special.entr(p).sum(-1)  # H[p] over the last dim
        mutual_information = entropy(probs.mean(0)) - entropy(probs).mean(0)  # (B,)
        return super().training_loss(logits, targets) - self.diversity * mutual_information.mean()
