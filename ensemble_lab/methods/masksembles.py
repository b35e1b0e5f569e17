"""Masksembles: one shared network, M fixed binary masks over features (Durasov et al., CVPR 2021)."""

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import LayerFactory, masksembles_layers
from ensemble_lab.nn.masks import check_scale


class Masksembles(EnsembleModule):
    """M members share every weight; member m sees only the features its fixed mask m keeps.

    The backbone's mask layers (MemberMasks) sit after each hidden activation of the MLP and on each
    residual block's output of ResNet-18 / WRN (WRN also before its linear). The masks are drawn
    once from a fixed seed and are the same in training and at test, so predictions are
    deterministic. Every member sees the whole (tiled) batch in training and at test; the paper
    instead trains each image with one mask drawn at random (M times cheaper per step).
    """

    def __init__(self, scale: float = 2.0, **kwargs) -> None:
        """
        Args:
            scale: the paper's s, in [1, 6]: each mask keeps floor(F / (s (1 - (1 - 1/s)^M))) of a
                layer's F features and two masks share about 1/s of them. s = 1 makes every mask all
                ones (M copies of a single model); a larger s means less overlap, so less correlated
                but narrower members (towards an ensemble). 2.0, the authors' usual setting.
        """
        check_scale(scale, "--model.scale")
        self.scale = scale
        super().__init__(**kwargs)

    def layer_factory(self) -> LayerFactory:
        return masksembles_layers(self.num_members, self.scale)
