"""Figures (a)-(d): layers and training / inference steps against the plain model doing the same work.

Every step here is hand-written (zero_grad, forward, loss, backward, optimizer step) so that the
two sides of a ratio differ only in the thing being measured.
"""

import copy
import dataclasses
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.settings import Settings
from benchmarks.timing import Figure, compare
from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, LowRankEnsemble, Masksembles, MCDropout, PackedEnsemble, SingleModel
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.metrics.tensor_memory import TensorMemory
from ensemble_lab.nn import BatchConv2d, BatchLinear, EnsembleConv2d, FastWeights, tile_members
from ensemble_lab.nn.ensemble_conv import members_to_channels

#: the paper's CIFAR optimizer (PAPER.md, Recipe)
SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _layer_step(layer: nn.Module, x: Tensor, settings: Settings, backward: bool) -> Callable[[], None]:
    grad = None

    def run() -> None:
        nonlocal grad
        if not backward:
            with torch.no_grad(), settings.autocast():
                layer(x)
            return
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with settings.autocast():
            y = layer(x)
        if grad is None or grad.dtype != y.dtype:
            grad = torch.ones_like(y)
        y.backward(grad)

    return run


def layers(settings: Settings) -> list[Figure]:
    """(a) BatchLinear / BatchConv2d vs nn.Linear / nn.Conv2d on the same M·B rows."""
    s, dev = settings.sizes, settings.device
    rows = s.members * s.batch
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    pairs = {
        "BatchLinear": (
            BatchLinear(s.features, s.features, s.members),
            nn.Linear(s.features, s.features),
            torch.randn(rows, s.features),
        ),
        "BatchConv2d 3x3": (
            BatchConv2d(s.channels, s.channels, 3, s.members, padding=1),
            nn.Conv2d(s.channels, s.channels, 3, padding=1, bias=False),
            torch.randn(rows, s.channels, s.conv_size, s.conv_size),
        ),
    }
    figures = []
    for name, (batch_layer, plain_layer, x) in pairs.items():
        x = x.to(dev)
        if x.dim() == 4:
            x = x.contiguous(memory_format=fmt)
            batch_layer, plain_layer = batch_layer.to(memory_format=fmt), plain_layer.to(memory_format=fmt)
        batch_layer, plain_layer = batch_layer.to(dev), plain_layer.to(dev)
        # An inner layer: its input needs a gradient. (On a leaf input the plain layer would skip
        # the input gradient, while BatchLinear / BatchConv2d still need it to reach r.)
        x.requires_grad_(True)
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            figures.append(compare(
                f"(a) {name} {label}",
                (name, _layer_step(batch_layer, x, settings, backward)),
                (type(plain_layer).__name__, _layer_step(plain_layer, x, settings, backward)),
                **settings.timing(),
            ))
    return figures


def make_method(cls: type[EnsembleModule], settings: Settings, backbone: str, **options) -> EnsembleModule:
    """A method on the benchmark's device, with the paper's SGD."""
    s = settings.sizes
    if backbone == "mlp":  # PAPER.md's MNIST MLP on MNIST-shaped inputs
        shape, extra = (1, 28, 28), dict(hidden_sizes=(64, 32, 16))
    else:
        shape, extra = (3, s.image, s.image), dict(width=s.width)
    module = cls(num_classes=10, input_shape=shape, backbone=backbone, channels_last=settings.channels_last, optimizer=SGD, **extra, **options)
    return module.to(settings.device)


def training_step(
    module: EnsembleModule, x: Tensor, y: Tensor, settings: Settings, optimizer: torch.optim.Optimizer | None = None
) -> Callable[[], None]:
    """One optimizer step of ``module`` on (x, y), as Lightning's automatic optimisation does it (with the
    module's own optimizer unless ``optimizer`` is given)."""
    optimizer = optimizer or module.configure_optimizers()
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with settings.autocast():
            batch = module.training_batch(x, y)
            loss = module.training_loss(batch.logits, batch.targets)
        loss.backward()
        optimizer.step()

    return step


def training_memory_mib(module: EnsembleModule, x: Tensor, y: Tensor, settings: Settings) -> float:
    """Peak MiB of live tensors in a training step of ``module`` on (x, y) once the optimizer has its state:
    parameters, batch, momentum, and the activations and gradients that forward and backward hold at once."""
    optimizer = module.configure_optimizers()
    step = training_step(module, x, y, settings, optimizer)
    step()  # the optimizer's state (momentum) exists from the first step on
    state = [t for per_parameter in optimizer.state.values() for t in per_parameter.values() if isinstance(t, Tensor)]
    with TensorMemory(module, x, y, *state) as memory:
        step()
    return memory.peak_bytes / 2**20


def batch(settings: Settings, backbone: str, count: int) -> tuple[Tensor, Tensor]:
    s = settings.sizes
    shape = (1, 28, 28) if backbone == "mlp" else (3, s.image, s.image)
    x = torch.randn(count, *shape, device=settings.device)
    return x, torch.randint(0, 10, (count,), device=settings.device)


def batch_ensemble_steps(settings: Settings) -> list[Figure]:
    """(b) a BatchEnsemble step on B images (M·B rows) vs the single model on M·B images."""
    s, figures = settings.sizes, []
    for backbone in ("mlp", "resnet18"):
        b = s.mlp_batch if backbone == "mlp" else s.batch
        x, y = batch(settings, backbone, b)
        ensemble = make_method(BatchEnsemble, settings, backbone, num_members=s.members)
        single = make_method(SingleModel, settings, backbone)
        tiled_x, tiled_y = x.repeat(s.members, *[1] * (x.dim() - 1)), y.repeat(s.members)  # (M*B, ...)
        figures.append(compare(
            f"(b) BatchEnsemble step, {backbone}",
            (f"BE M={s.members} B={b}", training_step(ensemble, x, y, settings)),
            (f"single B={s.members * b}", training_step(single, tiled_x, tiled_y, settings)),
            target="<= 1.15", **settings.timing(),
        ))
    return figures


def deep_ensemble_steps(settings: Settings) -> list[Figure]:
    """(c) the vectorized DeepEnsemble step vs M single-model steps one after the other."""
    s, figures = settings.sizes, []
    for backbone in ("mlp", "resnet18"):
        b = s.mlp_batch if backbone == "mlp" else s.batch
        x, y = batch(settings, backbone, b)
        ensemble = make_method(DeepEnsemble, settings, backbone, num_members=s.members)
        members = [training_step(make_method(SingleModel, settings, backbone), x, y, settings) for _ in range(s.members)]

        def sequential() -> None:
            for member_step in members:  # the reference: M independent networks, one at a time
                member_step()

        figures.append(compare(
            f"(c) DeepEnsemble step, {backbone}",
            (f"DE M={s.members} vectorized", training_step(ensemble, x, y, settings)),
            (f"{s.members} single steps", sequential),
            note="< 1 means the vectorized form is faster", **settings.timing(),
        ))
    return figures


def mc_dropout_samples(settings: Settings) -> list[Figure]:
    """(d) MC Dropout's M test-time samples as one tiled batch vs M separate forward passes."""
    s = settings.sizes
    x, _ = batch(settings, "resnet18", s.batch)
    model = make_method(MCDropout, settings, "resnet18", num_members=s.members, dropout=0.1).eval()

    def batched() -> None:
        with torch.inference_mode(), settings.autocast():
            F.softmax(model(x), dim=-1)  # (M, B, C)

    def looped() -> None:
        with torch.inference_mode(), settings.autocast():
            F.softmax(torch.stack([model.network(x) for _ in range(s.members)]), dim=-1)  # (M, B, C)

    return [compare(
        "(d) MC Dropout M samples", (f"batched M·B={s.members * s.batch}", batched), (f"{s.members} loops of B", looped),
        note="< 1 means batching is faster", **settings.timing(),
    )]


def batch_ensemble_variants(settings: Settings) -> list[Figure]:
    """(h) what BatchEnsemble's options cost: each variant's layer or step against the default's."""
    s, dev = settings.sizes, settings.device
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    rows = s.members * s.batch
    image = torch.randn(rows, s.channels, s.conv_size, s.conv_size, device=dev).contiguous(memory_format=fmt).requires_grad_(True)
    features = torch.randn(rows, s.features, device=dev).requires_grad_(True)
    conv = partial(BatchConv2d, s.channels, s.channels, 3, s.members, padding=1)
    linear = partial(BatchLinear, s.features, s.features, s.members)
    layer_pairs = [  # (figure, variant label, variant layer, default label, default layer, input)
        ("BatchConv2d 3x3 kernel-wise", "kernel", conv(perturbation="kernel"), "channel", conv(), image),
        ("BatchConv2d 3x3 rank 4", "rank 4", conv(fast_weights=FastWeights(rank=4)), "rank 1", conv(), image),
        ("BatchConv2d 3x3 gradient blocking", "blocking", conv(fast_weights=FastWeights(gradient_blocking=True)), "none", conv(), image),
        ("BatchLinear rank 4", "rank 4", linear(fast_weights=FastWeights(rank=4)), "rank 1", linear(), features),
    ]
    figures = []
    for title, a, variant, b, default, x in layer_pairs:
        variant, default = variant.to(dev, memory_format=fmt), default.to(dev, memory_format=fmt)
        figures.append(compare(
            f"(h) {title} fwd+bwd",
            (a, _layer_step(variant, x, settings, backward=True)),
            (b, _layer_step(default, x, settings, backward=True)),
            **settings.timing(),
        ))
    x, y = batch(settings, "resnet18", s.batch)
    default_step = training_step(make_method(BatchEnsemble, settings, "resnet18", num_members=s.members), x, y, settings)
    for option, value in (("perturbation", "kernel"), ("norm", "per_member")):
        variant = make_method(BatchEnsemble, settings, "resnet18", num_members=s.members, **{option: value})
        figures.append(compare(
            f"(h) BatchEnsemble step, resnet18, {option}={value}",
            (f"{option}={value}", training_step(variant, x, y, settings)),
            ("default", default_step),
            **settings.timing(),
        ))
    return figures


def _inference(module: EnsembleModule, x: Tensor, settings: Settings) -> Callable[[], None]:
    module.eval()

    def run() -> None:
        with torch.inference_mode(), settings.autocast():
            module(x)

    return run


def _peak_memory_mib(module: EnsembleModule, x: Tensor, settings: Settings) -> tuple[float, float | None]:
    """Peak MiB of one test forward of ``x``: live tensors (parameters, buffers, batch, activations; every
    device), and CUDA's allocation above what was allocated before it (None off CUDA)."""
    run = _inference(module, x, settings)
    with TensorMemory(module, x) as tensors:
        run()
    if settings.device.type != "cuda":
        return tensors.peak_bytes / 2**20, None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return tensors.peak_bytes / 2**20, (torch.cuda.max_memory_allocated() - before) / 2**20


def _memory_note(be: EnsembleModule, de: EnsembleModule, settings: Settings) -> str:
    """BE's and DE's parameters and peak test memory for 1, B and 8·B images (MiB, BE / DE)."""
    parameters = [sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20 for m in (be, de)]
    rows = [("parameters", *parameters)]
    for size in dict.fromkeys((1, settings.sizes.batch, 8 * settings.sizes.batch)):  # the gap narrows as activations grow
        x = batch(settings, "resnet18", size)[0]
        (be_tensors, be_cuda), (de_tensors, de_cuda) = _peak_memory_mib(be, x, settings), _peak_memory_mib(de, x, settings)
        rows.append((f"peak tensors B={size}", be_tensors, de_tensors))
        if be_cuda is not None and de_cuda is not None:
            rows.append((f"CUDA peak above parameters and batch B={size}", be_cuda, de_cuda))
    return "MiB BE / DE: " + "; ".join(f"{name} {a:.1f} / {b:.1f} = {a / b:.2f}" for name, a, b in rows)


def efficient_methods(settings: Settings) -> list[Figure]:
    """(i) BatchEnsemble against a Deep Ensemble at test (same M, ResNet-18), and every newer method's
    training step against the single model on the same rows (M·B images; MIMO: its B images)."""
    # Masksembles needs layers of at least 10 channels for distinct masks (micro mode's width is 2)
    settings = dataclasses.replace(settings, sizes=dataclasses.replace(settings.sizes, width=max(settings.sizes.width, 16)))
    s, figures = settings.sizes, []
    x, y = batch(settings, "resnet18", s.batch)
    be, de = (make_method(cls, settings, "resnet18", num_members=s.members) for cls in (BatchEnsemble, DeepEnsemble))
    figures.append(compare(
        "(i) test forward, BE vs DE, resnet18", (f"BE M={s.members}", _inference(be, x, settings)),
        (f"DE M={s.members}", _inference(de, x, settings)), note=_memory_note(be, de, settings), **settings.timing(),
    ))
    tiled_x, tiled_y = x.repeat(s.members, 1, 1, 1), y.repeat(s.members)  # (M*B, ...)
    single_tiled = training_step(make_method(SingleModel, settings, "resnet18"), tiled_x, tiled_y, settings)
    single = training_step(make_method(SingleModel, settings, "resnet18"), x, y, settings)
    methods = {"LowRankEnsemble": (LowRankEnsemble, {}), "PackedEnsemble": (PackedEnsemble, {}),
               "Masksembles": (Masksembles, {}), "MIMO": (MIMO, {})}  # fmt: skip
    for name, (cls, options) in methods.items():
        module = make_method(cls, settings, "resnet18", num_members=s.members, **options)
        reference, rows = (single, f"single B={s.batch}") if cls is MIMO else (single_tiled, f"single B={s.members * s.batch}")
        figures.append(compare(
            f"(i) {name} step, resnet18", (f"{name} M={s.members} B={s.batch}", training_step(module, x, y, settings)),
            (rows, reference), **settings.timing(),
        ))
    return figures


class TiledStem(nn.Module):
    """Packed-Ensembles' stem as built before 2026-12-06, on the same weights: the batch tiled M times, members
    moved to channels, one grouped convolution (groups=M) over the M copies. Same output as the dense stem."""

    def __init__(self, stem: EnsembleConv2d) -> None:
        """``stem``: the dense stem (shared_input) whose weights this runs the old way."""
        super().__init__()
        self.stem = stem

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, M*Cout, H', W') channel-stacked, as the dense stem returns it."""
        stem, m = self.stem, self.stem.num_members
        x = members_to_channels(tile_members(x, m), m)  # (M*B, C, H, W) -> (B, M*C, H, W)
        bias = None if stem.bias is None else stem.bias.flatten()
        return F.conv2d(x, stem.weight.flatten(0, 1), bias, stem.stride, stem.padding, groups=m)  # (B, M*Cout, H', W')


def packed_stem(settings: Settings) -> list[Figure]:
    """(k) PackedEnsemble's training step with its first layer as the authors run it (one dense conv on the B
    untiled images) against the same network and weights with the grouped stem over the tiled batch (M·B rows)."""
    s = settings.sizes
    x, y = batch(settings, "resnet18", s.batch)
    dense = make_method(PackedEnsemble, settings, "resnet18", num_members=s.members, alpha=2.0, gamma=2)
    tiled = copy.deepcopy(dense)
    tiled.network.conv1 = TiledStem(tiled.network.conv1)
    with torch.no_grad():  # the two are one network: same logits (up to summation order)
        gap = (dense.eval()(x) - tiled.eval()(x)).abs().max().item()
    if gap > 1e-3:
        raise RuntimeError(f"(k) the tiled stem changed the logits by {gap}: the figure would compare two networks")
    stem_dense, stem_tiled = dense.network.conv1, tiled.network.conv1  # the images need no gradient, as in a step
    layer = compare(
        "(k) PackedEnsemble stem layer fwd+bwd",
        (f"dense stem on B={s.batch}", _layer_step(stem_dense, x, settings, backward=True)),
        (f"grouped stem on M·B={s.members * s.batch}", _layer_step(stem_tiled, x, settings, backward=True)),
        **settings.timing(),
    )
    return [layer, compare(
        "(k) PackedEnsemble stem, resnet18",
        (f"dense stem on B={s.batch}", training_step(dense, x, y, settings)),
        (f"grouped stem on M·B={s.members * s.batch}", training_step(tiled, x, y, settings)),
        note=f"PE-(2, {s.members}, 2) width {s.width}; < 1 means the dense stem on the untiled batch is faster; logits agree to {gap:.1e}",
        **settings.timing(),
    )]
