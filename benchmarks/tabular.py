"""Figure (m): the tabular MLP's training steps, BatchEnsemble and TabM, against plain MLP steps doing the same work.

The networks are the tabular configs' MLP (``tabular_features`` inputs, three hidden layers of ``tabular_width``,
two classes) trained with AdamW, the optimizer TabM is published with; every step is hand-written as in
benchmarks/steps.py, so the two sides of a ratio differ only in the method.
"""

from functools import partial

import torch
from torch import Tensor

from benchmarks.settings import Settings
from benchmarks.steps import training_step
from benchmarks.timing import Figure, compare
from ensemble_lab.methods import BatchEnsemble, SingleModel
from ensemble_lab.methods.base import EnsembleModule

#: TabM's published optimizer (configs/tabular/tabm.yaml)
ADAMW = partial(torch.optim.AdamW, lr=0.002, weight_decay=0.0003)


def tabular_method(cls: type[EnsembleModule], settings: Settings, **options) -> EnsembleModule:
    """A method on the tabular MLP (three hidden layers), on the benchmark's device."""
    s = settings.sizes
    hidden = (s.tabular_width,) * 3
    module = cls(num_classes=2, input_shape=(s.tabular_features,), backbone="mlp", hidden_sizes=hidden, optimizer=ADAMW, **options)
    return module.to(settings.device)


def rows(settings: Settings, count: int) -> tuple[Tensor, Tensor]:
    """``count`` random standardised feature rows and binary labels."""
    x = torch.randn(count, settings.sizes.tabular_features, device=settings.device)
    return x, torch.randint(0, 2, (count,), device=settings.device)


def tabular_steps(settings: Settings) -> list[Figure]:
    """(m) a BatchEnsemble step (M members, B rows tiled) vs the plain MLP on the M·B tiled rows; TabM's step (k members,
    each on its own B rows, k·B in all) vs k plain MLP steps of B rows one after the other (k MLPs trained in turn)."""
    s = settings.sizes
    m, k, b = s.members, s.tabm_members, s.tabular_batch
    x, y = rows(settings, b)
    ensemble = tabular_method(BatchEnsemble, settings, num_members=m)
    single = tabular_method(SingleModel, settings)
    tiled_x, tiled_y = x.repeat(m, 1), y.repeat(m)  # (M*B, F): the rows every member sees
    figures = [compare(
        "(m) BatchEnsemble step, tabular mlp",
        (f"BE M={m} B={b}", training_step(ensemble, x, y, settings)),
        (f"single B={m * b}", training_step(single, tiled_x, tiled_y, settings)),
        **settings.timing(),
    )]
    tabm = tabular_method(BatchEnsemble, settings, num_members=k, fast_weight_init="tabm", head="independent", fast_weight_lr_scale=1.0)
    tabm._independent_batches = True  # as --data.train_batch independent: rows m·B .. (m+1)·B − 1 are member m's
    own_x, own_y = rows(settings, k * b)  # (k*B, F), member-major
    mlps = [tabular_method(SingleModel, settings) for _ in range(k)]
    mlp_steps = [training_step(mlp, own_x[i * b : (i + 1) * b], own_y[i * b : (i + 1) * b], settings) for i, mlp in enumerate(mlps)]

    def sequential() -> None:
        for step in mlp_steps:
            step()

    figures.append(compare(
        "(m) TabM step, tabular mlp",
        (f"TabM k={k} on k·B={k * b}", training_step(tabm, own_x, own_y, settings)),
        (f"{k} MLP steps of B={b}", sequential),
        **settings.timing(),
    ))
    return figures
