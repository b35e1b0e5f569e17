"""BatchEnsemble's options at the method level: gradient blocking, split batches, checks, controls."""

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.weight_space import weight_cosine
from ensemble_lab.nn import BatchLinear

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8), num_members=4)
RESNET = dict(input_shape=(3, 8, 8), num_classes=10, backbone="resnet18", width=4, num_members=4)


def batch(size: int = 8, channels: int = 1):
    return torch.randn(size, channels, 8, 8), torch.randint(0, 10, (size,))


def test_gradient_blocking_trains_w_from_member_0_alone():
    """Every shared W's gradient under blocking equals the gradient of member 0's loss alone, which
    an unblocked copy of the same network computes separately; fast weights still get the full gradient."""
    torch.manual_seed(0)
    blocked = BatchEnsemble(gradient_blocking=True, **MLP)
    free = BatchEnsemble(**MLP)
    free.load_state_dict(blocked.state_dict())
    x, y = batch()
    blocked.training_loss(blocked.training_batch(x, y).logits, y).backward()
    member_0 = free(x)[0]  # (B, C): member 0's logits, the same forward with or without blocking
    # the tiled loss averages over M members: member 0's share of it is its own mean CE / M
    (F.cross_entropy(member_0, y) / MLP["num_members"]).backward()
    layers = [(name, m) for name, m in blocked.named_modules() if isinstance(m, BatchLinear)]
    free_layers = dict(free.named_modules())
    for name, layer in layers:
        torch.testing.assert_close(layer.weight.grad, free_layers[name].weight.grad)
    full = BatchEnsemble(**MLP)
    full.load_state_dict(blocked.state_dict())
    full.training_loss(full.training_batch(x, y).logits, y).backward()
    for name, layer in layers:  # r, s and biases are trained by every member, as without blocking
        other = dict(full.named_modules())[name]
        for param in ("r", "s", "bias"):
            torch.testing.assert_close(getattr(layer, param).grad, getattr(other, param).grad)
        assert not torch.allclose(layer.weight.grad, other.weight.grad)


def test_split_gives_each_member_its_own_images():
    torch.manual_seed(1)
    model = BatchEnsemble(train_batch="split", **MLP).eval()  # eval: no dropout noise
    x, y = batch(8)
    step = model.training_batch(x, y)
    logits = step.logits
    assert logits.shape == (4, 2, 10)
    assert torch.equal(step.targets, y.view(4, 2))
    assert torch.equal(step.rows, torch.arange(8).view(4, 2))  # member i's own images 2i, 2i + 1
    changed = x.clone()
    changed[5] += 1.0  # image 5 belongs to member 5 // 2 = 2
    after = model.training_batch(changed, y).logits
    for member in range(4):
        assert torch.equal(after[member], logits[member]) == (member != 2)
    # member 2's logits are its own network on its own images
    torch.testing.assert_close(after[2], model(changed[4:6])[2])
    # a short last batch drops its last B mod M images; a batch smaller than M is an error
    assert model.training_batch(x[:7], y[:7]).logits.shape == (4, 1, 10)
    with pytest.raises(ConfigError, match="--data.batch_size divisible by 4"):
        model.training_batch(x[:3], y[:3])


def test_split_loss_uses_each_members_own_labels():
    model = BatchEnsemble(train_batch="split", **MLP)
    torch.manual_seed(4)
    logits = torch.randn(4, 2, 10)
    targets = torch.randint(0, 10, (4, 2))
    loss = model.training_loss(logits, targets)
    per_member = [F.cross_entropy(logits[i], targets[i]) for i in range(4)]
    torch.testing.assert_close(loss, torch.stack(per_member).mean())


def test_ones_init_starts_with_identical_members():
    torch.manual_seed(2)
    for options in (MLP, RESNET):
        model = BatchEnsemble(fast_weight_init="ones", **options).eval()
        x, y = batch(16, channels=options["input_shape"][0])
        with torch.no_grad():
            metrics = predictive_metrics(model(x).softmax(-1), y)
        assert metrics["disagreement"] == 0.0 and metrics["mi"] < 1e-7
        torch.testing.assert_close(weight_cosine(model), torch.ones(4, 4, dtype=torch.float64), rtol=0, atol=1e-12)
    default = BatchEnsemble(**MLP).eval()
    x, y = batch(16)
    with torch.no_grad():
        assert predictive_metrics(default(x).softmax(-1), y)["disagreement"] > 0  # the check can fail


def test_unperturbed_member_0_through_the_method_optimizer():
    torch.manual_seed(3)
    model = BatchEnsemble(unperturbed_first_member=True, gradient_blocking=True, rank=2, **MLP)
    layers = [m for m in model.modules() if isinstance(m, BatchLinear)]
    before = [(layer.r[0].clone(), layer.s[0].clone(), layer.r[1].clone()) for layer in layers]
    optimizer = model.configure_optimizers()
    for _ in range(3):
        optimizer.zero_grad()
        x, y = batch()
        model.training_loss(model.training_batch(x, y).logits, y).backward()
        optimizer.step()
    for layer, (r0, s0, r1) in zip(layers, before):
        assert torch.equal(layer.r[0], r0) and torch.equal(layer.s[0], s0) and not torch.equal(layer.r[1], r1)
        assert torch.equal(layer.member_weight(0), layer.weight)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(MLP, perturbation="kernel"), "--model.perturbation kernel applies to convolutions; the mlp backbone"),
        (dict(MLP, norm="per_member"), "--model.norm per_member applies to BatchNorm / LayerNorm layers; the mlp backbone"),
        (dict(MLP, train_batch="halves"), "--model.train_batch 'halves' is not known"),
        (dict(MLP, rank=0), "--model.rank must be an integer >= 1"),
        (dict(MLP, fast_weight_init="zeros"), "allowed: normal, random_sign, ones"),
    ],
)
def test_options_that_cannot_apply_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        BatchEnsemble(**options)


def test_kernel_and_per_member_norm_build_on_a_conv_backbone():
    model = BatchEnsemble(perturbation="kernel", norm="per_member", rank=2, **RESNET)
    x, _ = batch(2, channels=3)
    assert model(x).shape == (4, 2, 10)
