"""TabM (Gorishniy et al., ICLR 2025) as BatchEnsemble options: its construction, init and loss."""

import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble
from ensemble_lab.nn import BatchLinear, EnsembleLinear

K, D_IN, WIDTH, BLOCKS, CLASSES = 32, 7, 8, 3, 3
TABM = dict(
    input_shape=(D_IN,), num_classes=CLASSES, hidden_sizes=(WIDTH,) * BLOCKS, num_members=K, fast_weight_init="tabm", head="independent"
)


def tabm_parameters(k: int, d_in: int, d: int, blocks: int, d_out: int) -> int:
    """The paper's count, by hand: every hidden layer is W (in·d) plus the adapters R (k·in), S (k·d) and B (k·d);
    the output is k independent heads of d·d_out weights and d_out biases."""
    first = d_in * d + k * d_in + k * d + k * d
    others = (blocks - 1) * (d * d + 3 * k * d)
    heads = k * (d * d_out + d_out)
    return first + others + heads


def test_parameter_count_is_the_papers():
    model = BatchEnsemble(**TABM)
    count = sum(p.numel() for p in model.parameters())
    # 7·8 + 32·7 + 2·32·8 = 792; 2·(64 + 3·32·8) = 1664; 32·(8·3 + 3) = 864
    assert count == tabm_parameters(K, D_IN, WIDTH, BLOCKS, CLASSES) == 792 + 1664 + 864


def test_only_the_first_layers_r_is_random_signs():
    torch.manual_seed(0)
    model = BatchEnsemble(**TABM)
    first, *others = [m for m in model.network if isinstance(m, BatchLinear)]
    assert len(others) == BLOCKS - 1
    r = first.r.detach()
    assert set(r.unique().tolist()) == {-1.0, 1.0}  # ±1 only, both drawn
    assert 0.3 < (r > 0).float().mean() < 0.7  # 224 fair coin flips
    assert torch.equal(first.s, torch.ones_like(first.s))
    for layer in others:
        assert torch.equal(layer.r, torch.ones_like(layer.r)) and torch.equal(layer.s, torch.ones_like(layer.s))
    for layer in (first, *others):  # one bias draw shared by every member
        assert torch.equal(layer.bias, layer.bias[:1].expand_as(layer.bias))
    (head,) = [m for m in model.network if isinstance(m, EnsembleLinear)]
    assert not torch.equal(head.weight[0], head.weight[1])  # k heads drawn independently


def member_output(model: BatchEnsemble, m: int, x: torch.Tensor) -> torch.Tensor:
    """Member m by hand as a plain MLP: each hidden layer ((h ∘ r_m) Wᵀ) ∘ s_m + b_m, ReLU; then head m."""
    layers = [module for module in model.network if isinstance(module, BatchLinear)]
    (head,) = [module for module in model.network if isinstance(module, EnsembleLinear)]
    h = x
    for layer in layers:
        h = F.relu(F.linear(h * layer.r[m], layer.weight) * layer.s[m] + layer.bias[m])
    return F.linear(h, head.member_weight(m), head.bias[m])


def test_members_start_as_the_shared_mlp_on_sign_flipped_inputs():
    """At init, member m is the shared MLP (W and one bias per layer) on x ∘ r_m, with its own head."""
    torch.manual_seed(0)
    model = BatchEnsemble(**TABM).eval()
    x = torch.randn(5, D_IN)
    layers = [module for module in model.network if isinstance(module, BatchLinear)]
    for m in (0, 7, 31):
        h = x * layers[0].r[m]
        for layer in layers:
            h = F.relu(F.linear(h, layer.weight, layer.bias[0]))
        (head,) = [module for module in model.network if isinstance(module, EnsembleLinear)]
        torch.testing.assert_close(model(x)[m], F.linear(h, head.member_weight(m), head.bias[m]))


def test_loss_is_the_mean_of_the_members_losses_on_their_own_rows():
    torch.manual_seed(0)
    model = BatchEnsemble(**TABM)
    model._independent_batches = True  # what --data.train_batch independent sets when fit starts
    x, y = torch.randn(K * 4, D_IN), torch.randint(0, CLASSES, (K * 4,))
    step = model.training_batch(x, y)
    loss = model.training_loss(step.logits, step.targets)
    rows = [slice(4 * m, 4 * (m + 1)) for m in range(K)]  # member m's own rows: the m-th block of 4
    per_member = [F.cross_entropy(member_output(model, m, x[rows[m]]), y[rows[m]]) for m in range(K)]
    torch.testing.assert_close(loss, torch.stack(per_member).mean())


def test_independent_head_needs_the_mlp():
    with pytest.raises(ConfigError, match="--model.head independent applies to the mlp backbone"):
        BatchEnsemble(input_shape=(3, 8, 8), num_classes=10, backbone="resnet18", width=4, num_members=2, head="independent")
    with pytest.raises(ConfigError, match="--model.head 'shared' is not known"):
        BatchEnsemble(**{**TABM, "head": "shared"})
