"""Figure (l): BatchEnsemble on vision transformers, against the plain network doing the same work.

- ensemble-lab's own ViT: a BatchEnsemble training step on B images (M·B rows) vs the SingleModel ViT on M·B images;
- a timm model converted by module surgery (timm's vit_tiny_patch16_224 at the same sizes): the BatchEnsemble
  of it vs the plain timm model (SingleModel of the same TimmOptions) on M·B images.

Both sides use the paper's SGD and the steps of ``steps.training_step``; the ViT sizes are the mode's (``vit_*``).
"""

import torch
from torch import Tensor

from benchmarks.settings import Settings
from benchmarks.steps import SGD, training_step
from benchmarks.timing import Figure, compare
from ensemble_lab.methods import BatchEnsemble, SingleModel
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import TimmOptions, ViTOptions


def _vit_options(settings: Settings, timm: bool) -> ViTOptions | TimmOptions:
    s = settings.sizes
    sizes = dict(patch_size=s.vit_patch, embed_dim=s.vit_dim, depth=s.vit_depth, num_heads=s.vit_heads)
    if timm:
        return TimmOptions("vit_tiny_patch16_224", dict(img_size=s.image, **sizes))
    return ViTOptions(**sizes)


def _method(cls: type[EnsembleModule], settings: Settings, timm: bool, **options) -> EnsembleModule:
    s = settings.sizes
    shape = (3, s.image, s.image)
    return cls(num_classes=10, input_shape=shape, backbone=_vit_options(settings, timm), optimizer=SGD, **options).to(settings.device)


def _batch(settings: Settings, rows: int) -> tuple[Tensor, Tensor]:
    s = settings.sizes
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, s.image, s.image, generator=generator).to(settings.device)
    return x, torch.randint(0, 10, (rows,), generator=generator).to(settings.device)


def vit_steps(settings: Settings) -> list[Figure]:
    """(l) BatchEnsemble ViT step (own and timm-converted) vs the plain ViT on the same M·B rows."""
    s, figures = settings.sizes, []
    x, y = _batch(settings, s.batch)
    tiled_x, tiled_y = x.repeat(s.members, 1, 1, 1), y.repeat(s.members)  # (M*B, ...)
    for timm, label in ((False, "vit"), (True, "timm vit")):
        ensemble = _method(BatchEnsemble, settings, timm, num_members=s.members)
        single = _method(SingleModel, settings, timm)
        figures.append(compare(
            f"(l) BatchEnsemble step, {label}",
            (f"BE M={s.members} B={s.batch}", training_step(ensemble, x, y, settings)),
            (f"single B={s.members * s.batch}", training_step(single, tiled_x, tiled_y, settings)),
            target="<= 1.2", **settings.timing(),
        ))
    return figures
