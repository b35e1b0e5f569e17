"""Cost beside quality: parameter counts and FLOPs against the layers' formulas, throughput measured."""

import pytest
import torch

from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.metrics.cost import COST_KEYS, format_cost, measure_cost, parameter_counts

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8))
LAYERS = [(64, 16), (16, 8), (8, 10)]  # (in, out) of the MLP's three linear layers
M = 4


def test_parameter_counts_follow_the_layers_formulas():
    plain = sum(i * o + o for i, o in LAYERS)  # nn.Linear: weight and bias
    assert parameter_counts(SingleModel(**MLP), 1) == (plain, plain)
    assert parameter_counts(MCDropout(num_members=M, dropout=0.1, **MLP), M) == (plain, plain)  # every weight shared
    assert parameter_counts(DeepEnsemble(num_members=M, **MLP), M) == (M * plain, plain)
    # BatchEnsemble: shared W; per member r (in), s (out) and a bias (out)
    total = sum(i * o + M * (i + 2 * o) for i, o in LAYERS)
    per_member = sum(i * o + i + 2 * o for i, o in LAYERS)
    assert parameter_counts(BatchEnsemble(num_members=M, **MLP), M) == (total, per_member)


@pytest.mark.parametrize("cls, members", [(SingleModel, 1), (BatchEnsemble, M), (DeepEnsemble, M)])
def test_flops_per_image_are_two_per_multiply_add_of_every_member(cls, members):
    model = cls(num_members=members, **MLP).eval()
    cost = measure_cost(model, torch.randn(6, 1, 8, 8), members, warmup=0, min_time=0.01)
    assert cost["flops_per_image"] == 2 * members * sum(i * o for i, o in LAYERS)
    assert set(cost) == set(COST_KEYS) and cost["images_per_s"] > 0 and cost["peak_memory_bytes"] is None
    assert "parameters" in format_cost(cost, "cpu") and "images/s on cpu" in format_cost(cost, "cpu")


def test_peak_tensor_memory_holds_the_parameters_and_batch_and_repeats_exactly():
    images = torch.randn(6, 1, 8, 8)
    costs = {}
    for cls, members in [(SingleModel, 1), (BatchEnsemble, M), (DeepEnsemble, M)]:
        model = cls(num_members=members, **MLP).eval()
        first, second = (measure_cost(model, images, members, warmup=0, min_time=0.01) for _ in range(2))
        assert first["peak_tensor_bytes"] == second["peak_tensor_bytes"]  # counted, not sampled
        held = 4 * first["parameters"] + images.numel() * 4  # float32 parameters and batch
        logits = 4 * members * images.shape[0] * 10  # the (M, B, C) output, alive at the end
        assert first["peak_tensor_bytes"] >= held + logits
        costs[cls] = first["peak_tensor_bytes"]
    assert costs[DeepEnsemble] > costs[BatchEnsemble] > costs[SingleModel]  # M copies of W; M rows per image
    assert "peak tensors" in format_cost(first, "cpu")
