"""Deep Ensemble: M independently initialised networks, trained side by side in one batched pass."""

from torch import Tensor
from torch.nn import functional as F

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, deep_ensemble_layers


class DeepEnsemble(EnsembleModule):
    """M independent members; every layer holds M weights and runs them in one op."""

    def layer_factory(self) -> LayerFactory:
        return deep_ensemble_layers(self.num_members)

    def training_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """SUM over members of each member's mean cross-entropy: every member gets the gradient it
        would get if it were trained alone (a mean would shrink each member's step by 1/M)."""
        m, b, c = logits.shape
        per_row = F.cross_entropy(logits.reshape(m * b, c), targets.repeat(m), reduction="none")  # (M*B,)
        return per_row.view(m, b).mean(dim=1).sum()
