"""Masksembles: one shared network, M fixed binary masks over features (Durasov et al., CVPR 2021)."""

import torch

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, masksembles_layers
from ensemble_lab.nn.masks import check_mask_placement, check_mask_seed, check_scale


class Masksembles(EnsembleModule):
    """M members share every weight; member m sees only the features its fixed mask m keeps.

    Where the mask layers (MemberMasks) go is ``mask_placement``: by default as in the authors'
    ResNet, on the input of every conv inside a residual block (both convs and a projection
    shortcut's) and on the pooled features before the classifier (ResNet-18: 20 mask layers; WRN
    the same way), each layer with masks of its own; on the MLP, after each hidden activation. The
    masks are drawn from the run's seed, once, and are the same in training and at test, so
    predictions are deterministic. Every member sees the whole (tiled) batch in training and at
    test; the paper instead trains each image with one mask drawn at random (M times cheaper per step).
    """

    def __init__(self, scale: float = 2.0, mask_placement: str = "inputs", mask_seed: int | None = None, **kwargs) -> None:
        """
        Args:
            scale: the paper's s, in [1, 6]: each mask keeps floor(F / (s (1 - (1 - 1/s)^M))) of a
                layer's F features and two masks share about 1/s of them. s = 1 makes every mask all
                ones (M copies of a single model); a larger s means less overlap, so less correlated
                but narrower members (towards an ensemble). 2.0, the authors' usual setting.
            mask_placement: where the masks go. "inputs" (the authors'): the input of every conv inside
                a residual block (projection shortcuts included) and the pooled features before the
                classifier (ResNet-18: 20 mask layers), each layer its own masks; MLP: after each hidden
                activation. "block_outputs" (this library's earlier placement): each residual block's
                output and, on WRN, the classifier's input (ResNet-18: 8 mask layers), layers of one
                width sharing their masks; MLP as "inputs".
            mask_seed: the seed the masks are drawn from, an integer >= 0; null (the default): the run's
                seed (``--seed_everything``, read as torch.initial_seed()), so every seed of a study draws
                other masks. The seed used is recorded in the checkpoint's hyperparameters, the masks
                themselves in its state_dict.
        """
        check_scale(scale, "--model.scale")
        check_mask_placement(mask_placement, "--model.mask_placement")
        check_mask_seed(mask_seed, "--model.mask_seed")
        self.scale, self.mask_placement = scale, mask_placement
        # seed_everything (the CLI's --seed_everything) seeded torch before this model is built
        self.mask_seed = torch.initial_seed() if mask_seed is None else mask_seed
        super().__init__(**kwargs)
        self.hparams["mask_seed"] = self.mask_seed  # the seed the masks came from, not null

    def layer_factory(self) -> LayerFactory:
        return masksembles_layers(self.num_members, self.scale, self.mask_placement, self.mask_seed)
