"""MIMO: M stacked inputs and M heads in one plain network; own images per member in training."""

import pytest
import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import MIMO, SingleModel
from ensemble_lab.methods.mimo import mimo_indices
from ensemble_lab.metrics.weight_space import weight_cosine

M, K = 4, 10
MLP = dict(input_shape=(1, 8, 8), num_classes=K, hidden_sizes=(16, 8), num_members=M)
RESNET = dict(input_shape=(3, 8, 8), num_classes=K, backbone="resnet18", width=4, num_members=M)


def first_layer(model: MIMO) -> torch.nn.Module:
    """The module that receives the stacked input: the MLP's Flatten, the ResNet's stem conv."""
    network = model.network
    return network[0] if isinstance(network, torch.nn.Sequential) else network.conv1


def record_input(module: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("options", [MLP, RESNET], ids=["mlp", "resnet18"])
def test_at_test_every_member_gets_the_same_image(options):
    torch.manual_seed(0)
    model = MIMO(**options).eval()
    x = torch.randn(5, *options["input_shape"])
    seen, handle = record_input(first_layer(model))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert logits.shape == (M, 5, K)
    (stacked,) = seen
    assert torch.equal(stacked, torch.cat([x, x, x, x], dim=1))  # (B, M·C, H, W): the image in every member's channels


@pytest.mark.parametrize("options", [MLP, RESNET], ids=["mlp", "resnet18"])
def test_forward_is_the_network_on_hand_built_inputs(options):
    torch.manual_seed(1)
    model = MIMO(**options).eval()
    x = torch.randn(3, *options["input_shape"])
    with torch.no_grad():
        expected = model.network(torch.cat([x] * M, dim=1)).view(3, M, K).permute(1, 0, 2)  # (M, B, K)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        # training: row j stacks member m's image indices[m, j] in channels m·C..(m+1)·C − 1; head m is logits m·K..
        step = model.training_batch(x, torch.arange(3))
        logits, indices = step.logits, step.rows
        assert torch.equal(step.targets, indices)  # labels 0..B−1: each row's label is its image
        for j in range(indices.shape[1]):
            row = torch.cat([x[indices[m, j]] for m in range(M)]).unsqueeze(0)  # (1, M·C, H, W)
            heads = model.network(row).view(M, K)
            torch.testing.assert_close(logits[:, j], heads, rtol=1e-5, atol=1e-6)


def test_training_rows_depend_only_on_their_own_images():
    """Perturb source image i: exactly the training rows that stack image i (for any member) change.

    Every head reads all M inputs of its row (independence is learned, not built in), so at init
    a row's logits change for every member when any member's image in that row changes; rows that
    never see image i stay bitwise equal."""
    torch.manual_seed(2)
    model = MIMO(**MLP).eval()
    x = torch.randn(8, 1, 8, 8)
    torch.manual_seed(3)
    y = torch.zeros(8, dtype=torch.long)
    step = model.training_batch(x, y)
    logits, indices = step.logits.detach(), step.rows
    changed = x.clone()
    changed[5] += 1.0
    torch.manual_seed(3)  # the same draw: the indices do not depend on the pixels
    again = model.training_batch(changed, y)
    after = again.logits.detach()
    assert torch.equal(again.rows, indices)
    sees_5 = (indices == 5).any(0)  # (N,): rows in which some member sees image 5
    assert sees_5.any() and not sees_5.all()
    moved = (after != logits).any(-1)  # (M, N)
    assert torch.equal(moved, sees_5.expand(M, -1))


def test_targets_match_the_images_each_member_saw():
    """Image i is the constant i, so the first layer's input says which image each member saw."""
    torch.manual_seed(4)
    model = MIMO(input_repetition=0.5, batch_repetition=2, **MLP)
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 8, 8).contiguous()
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    seen, handle = record_input(first_layer(model))
    step = model.training_batch(x, y)
    handle.remove()
    targets = step.targets
    (stacked,) = seen  # (N, M·C, H, W)
    assert stacked.shape == (12, M, 8, 8) and targets.shape == (M, 12)
    source = stacked.mean(dim=(2, 3)).round().long().T  # (M, N): the image in member m's channels of row j
    assert torch.equal(targets, y[source])
    assert torch.equal(source, step.rows)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9, 1 - 1e-6])
def test_input_repetition_shares_a_fraction_rho_of_rows(rho):
    torch.manual_seed(5)
    batch, r = 64, 2
    shared = []
    for _ in range(20):
        indices = mimo_indices(batch, M, rho, r)  # (M, N)
        assert indices.shape == (M, batch * r)
        for member in indices:  # every member: a permutation of the repeated batch, each image r times
            assert torch.equal(torch.bincount(member, minlength=batch), torch.full((batch,), r))
        shared.append((indices == indices[0]).all(0).float().mean())  # rows where every member sees member 0's image
    fraction = float(torch.stack(shared).mean())
    assert fraction == pytest.approx(rho, abs=0.02)
    if rho > 0.999:  # ρ = 1 − ε: every row shared, all members see the same images
        assert fraction == 1.0


def test_input_repetition_one_gives_every_member_the_same_images():
    # the peer library's MIMO configs (ρ = 1, r = 1): every member trains on member 0's image order
    torch.manual_seed(7)
    model = MIMO(input_repetition=1.0, batch_repetition=1, **MLP)
    indices = mimo_indices(64, M, model.input_repetition, model.batch_repetition)
    assert torch.equal(indices, indices[0].expand(M, -1))
    assert sorted(indices[0].tolist()) == list(range(64))  # still each image once


def test_input_repetition_zero_gives_independent_members():
    torch.manual_seed(6)
    indices = mimo_indices(64, M, 0.0, 1)
    same_as_0 = (indices[1:] == indices[0]).float().mean()  # chance matches only: 1/64 expected
    assert same_as_0 < 0.06
    assert not torch.equal(indices[1], indices[2])


@pytest.mark.parametrize("r", [1, 3])
def test_batch_repetition_gives_b_times_r_rows(r):
    torch.manual_seed(7)
    model = MIMO(batch_repetition=r, **MLP)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, K, (5,))
    step = model.training_batch(x, y)
    logits, targets = step.logits, step.targets
    assert logits.shape == (M, 5 * r, K) and targets.shape == (M, 5 * r)
    loss = model.training_loss(logits, targets)
    assert loss.shape == () and torch.isfinite(loss)
    assert model(x).shape == (M, 5, K)  # test: B rows whatever r


def test_seeded_draws_reproduce():
    torch.manual_seed(8)
    first = mimo_indices(16, M, 0.25, 2)
    torch.manual_seed(8)
    assert torch.equal(mimo_indices(16, M, 0.25, 2), first)


def test_training_batches_share_no_state():
    """Two training batches in a row: each one's labels are drawn for its own rows, whatever came before."""
    model = MIMO(batch_repetition=2, **MLP)
    first = model.training_batch(torch.randn(4, 1, 8, 8), torch.arange(4))
    second = model.training_batch(torch.randn(6, 1, 8, 8), torch.arange(6))
    assert first.rows.shape == (M, 8) and second.rows.shape == (M, 12)
    assert torch.equal(second.targets, second.rows) and int(second.rows.max()) <= 5


def test_resnet18_cifar_parameter_count():
    """Only the stem's input channels and the head's output rows grow with M."""
    mimo = MIMO(backbone="resnet18", width=64, num_members=M, input_shape=(3, 32, 32), num_classes=10)
    single = SingleModel(backbone="resnet18", width=64, input_shape=(3, 32, 32), num_classes=10)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(single) == 11_173_962
    stem = (M - 1) * 3 * 64 * 9  # conv1: 3 more input channels per extra member, 64 filters of 3×3
    heads = (M - 1) * (512 * 10 + 10)  # linear: 10 more output rows (and biases) per extra member
    assert count(mimo) == 11_173_962 + stem + heads == 11_194_536


def test_weight_cosine_is_null():
    assert weight_cosine(MIMO(**MLP)) is None  # plain layers report no members


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(input_repetition=1.5), "--model.input_repetition must be a number in \\[0, 1\\], got 1.5"),
        (dict(input_repetition=-0.1), "--model.input_repetition must be a number in \\[0, 1\\]"),
        (dict(input_repetition=True), "--model.input_repetition must be a number in \\[0, 1\\]"),
        (dict(batch_repetition=0), "--model.batch_repetition must be an integer >= 1, got 0"),
        (dict(batch_repetition=2.0), "--model.batch_repetition must be an integer >= 1"),
    ],
)
def test_bad_values_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        MIMO(**options, **MLP)
