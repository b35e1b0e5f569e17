"""timm models ensembled by their layers: each member against timm's own model with that member's weights put
in by hand, the shared weights against timm's, the stacked Deep Ensemble against its members one at a time,
and the errors (a method that cannot convert, a missing timm)."""

import copy
import sys

import pytest
import torch
from torch import nn

from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.evaluation.member_networks import member_states
from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, LowRankEnsemble, Masksembles, MCDropout, PackedEnsemble
from ensemble_lab.metrics.weight_space import weight_cosine
from ensemble_lab.nn import (
    AlwaysOnDropout,
    BatchConv2d,
    BatchLinear,
    EnsembleBatchNorm2d,
    EnsembleLayerNorm,
    LowRankConv2d,
    LowRankLinear,
    TimmOptions,
    backbone_from,
)
from ensemble_lab.nn.factories import batch_ensemble_layers
from ensemble_lab.nn.timm_surgery import convert_layers

timm = pytest.importorskip("timm")

M, B, SHAPE, CLASSES = 3, 2, (3, 8, 8), 5
VIT_ARGS = {"img_size": 8, "patch_size": 2, "depth": 1, "embed_dim": 16, "num_heads": 2}
#: a timm ResNet-18 cut to one block per stage of 8 channels: its layout (stem, max pool, basic blocks, downsampling)
RESNET_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem_width": 8}
VIT = TimmOptions("vit_tiny_patch16_224", VIT_ARGS)
RESNET = TimmOptions("resnet18", RESNET_ARGS)


def timm_model(options: TimmOptions, seed: int, **extra) -> nn.Module:
    """timm's model built directly, with the seed the ensemble is built with (its shared weights are drawn first)."""
    torch.manual_seed(seed)
    return timm.create_model(options.model_name, num_classes=CLASSES, in_chans=SHAPE[0], **extra, **options.model_args)


def ensemble(method, options: TimmOptions, seed: int, **kwargs):
    torch.manual_seed(seed)
    return method(backbone=options, input_shape=SHAPE, num_classes=CLASSES, num_members=M, **kwargs).eval()


def hand_member(reference: nn.Module, network: nn.Module, i: int) -> nn.Module:
    """timm's ``reference`` with member i's effective weights multiplied / added in by hand from the stored tensors."""
    member = copy.deepcopy(reference).eval()
    with torch.no_grad():
        for name, layer in network.named_modules():
            target = member.get_submodule(name) if name else member
            if isinstance(layer, BatchLinear):  # W ∘ s_i r_iᵀ
                target.weight.copy_(layer.weight * torch.outer(layer.s[i], layer.r[i]))
            elif isinstance(layer, BatchConv2d):  # channel-wise: W ∘ s_i r_iᵀ at every kernel position
                target.weight.copy_(layer.weight * layer.s[i][:, None, None, None] * layer.r[i][None, :, None, None])
            elif isinstance(layer, LowRankLinear | LowRankConv2d):  # W + A_i B_i
                target.weight.copy_(layer.weight + (layer.A[i] @ layer.B[i]).view_as(layer.weight))
            else:
                continue
            if layer.bias is not None:
                target.bias.copy_(layer.bias[i])
    return member


def shared_weights_are_timms(network: nn.Module, reference: nn.Module) -> None:
    theirs = dict(reference.named_parameters())
    for name, tensor in network.named_parameters():
        if name.endswith("weight") and name in theirs and tensor.shape == theirs[name].shape:
            torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "method,options,kwargs,member_type",
    [
        (BatchEnsemble, VIT, {}, BatchLinear),
        (BatchEnsemble, RESNET, {}, BatchConv2d),
        (LowRankEnsemble, VIT, {"factor_init": "small", "adapters": "attention"}, LowRankLinear),
        (LowRankEnsemble, RESNET, {"factor_init": "small"}, LowRankConv2d),
    ],
    ids=["batch_ensemble-vit", "batch_ensemble-resnet", "low_rank_attention-vit", "low_rank-resnet"],
)
def test_each_member_equals_timms_model_with_its_effective_weights(method, options, kwargs, member_type):
    model, reference = ensemble(method, options, 0, **kwargs), timm_model(options, 0).eval()
    assert any(isinstance(m, member_type) for m in model.network.modules())
    shared_weights_are_timms(model.network, reference)
    x = torch.randn(B, *SHAPE)
    with torch.no_grad():
        logits = model(x)  # (M, B, K)
        for i in range(M):
            torch.testing.assert_close(logits[i], hand_member(reference, model.network, i)(x), rtol=1e-4, atol=1e-5)
    # connectivity's reading of members (the member-layer protocol) gives the same networks
    plain = model.member_network()
    for i, state in enumerate(member_states(model.network, plain, M, method.__name__)):
        torch.testing.assert_close(state, hand_member(reference, model.network, i).state_dict())


def test_low_rank_attention_adapters_go_on_timms_attention_projections_and_classifier_only():
    model = ensemble(LowRankEnsemble, VIT, 0, adapters="attention")
    adapted = sorted(name for name, m in model.network.named_modules() if isinstance(m, LowRankLinear))
    assert adapted == ["blocks.0.attn.proj", "blocks.0.attn.qkv", "head"]
    frozen = ensemble(LowRankEnsemble, VIT, 0, adapters="attention", freeze_shared=True)  # LoRA-Ensemble fine-tuning
    trained = {name for name, p in frozen.named_parameters() if p.requires_grad}
    assert trained == {f"network.{layer}.{t}" for layer in adapted for t in ("A", "B", "bias")}
    everywhere = ensemble(LowRankEnsemble, VIT, 0)
    assert {type(m) for m in everywhere.network.modules()} >= {LowRankLinear, LowRankConv2d}
    assert not any(type(m) is nn.Linear for m in everywhere.network.modules())


def test_weight_cosine_of_a_converted_model_is_that_of_the_members_effective_weights():
    model, reference = ensemble(BatchEnsemble, VIT, 1), timm_model(VIT, 1)
    members = [hand_member(reference, model.network, i) for i in range(M)]
    owned = [n for n, m in model.network.named_modules() if isinstance(m, BatchLinear | BatchConv2d)]
    flat = torch.stack(
        [torch.cat([p.detach().double().flatten() for n in owned for p in member.get_submodule(n).parameters()]) for member in members]
    )  # (M, P): every member's effective weights and biases of the converted layers
    unit = flat / flat.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weight_cosine(model), unit @ unit.T)


def test_deep_ensemble_runs_m_independent_timm_models_in_one_call():
    model = ensemble(DeepEnsemble, RESNET, 2)
    torch.manual_seed(2)
    references = [timm.create_model("resnet18", num_classes=CLASSES, in_chans=3, **RESNET_ARGS) for _ in range(M)]  # drawn in turn
    assert sum(p.numel() for p in model.parameters()) == M * sum(p.numel() for p in references[0].parameters())
    x = torch.randn(B, *SHAPE)
    model.train()
    logits = model(x)  # training: batch statistics, running statistics updated per member
    for i, reference in enumerate(references):
        reference.train()
        torch.testing.assert_close(logits[i], reference(x), rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        states = member_states(model.network, model.member_network(), M, "DeepEnsemble")
        for i, reference in enumerate(references):
            reference.eval()
            torch.testing.assert_close(logits[i], reference(x), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(states[i], reference.state_dict(), rtol=1e-4, atol=1e-4)  # running statistics too
    cosine = weight_cosine(model)
    assert cosine is not None and cosine.shape == (M, M) and float(cosine[0, 1]) < 0.5  # independent draws


def test_deep_ensemble_gradients_reach_each_member_as_if_trained_alone():
    model = ensemble(DeepEnsemble, VIT, 3)
    torch.manual_seed(3)
    references = [timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES, **VIT_ARGS) for _ in range(M)]
    x = torch.randn(B, *SHAPE)
    model(x).square().sum().backward()
    stacked = dict(model.network.network.named_parameters())
    for i, reference in enumerate(references):
        reference(x).square().sum().backward()
        for name, p in reference.named_parameters():
            torch.testing.assert_close(stacked[name].grad[i], p.grad, rtol=1e-4, atol=1e-6)


def test_mc_dropout_keeps_timms_dropout_layers_on_at_test_time():
    model = ensemble(MCDropout, VIT, 4, dropout=0.2)
    shared_weights_are_timms(model.network, timm_model(VIT, 4, drop_rate=0.2))
    assert any(isinstance(m, AlwaysOnDropout) for m in model.network.modules())
    logits = model(torch.randn(B, *SHAPE))  # eval mode: the M samples still differ
    assert not torch.allclose(logits[0], logits[1])
    attention = ensemble(MCDropout, TimmOptions(VIT.model_name, dict(VIT_ARGS, attn_drop_rate=0.3)), 4, dropout=0.2).network.blocks[0].attn
    assert isinstance(attention.attn_drop, AlwaysOnDropout) and not attention.fused_attn  # the form that calls attn_drop
    with pytest.raises(ConfigError, match="applies its dropout as a function"):
        ensemble(MCDropout, RESNET, 4, dropout=0.2)


@pytest.mark.parametrize("method", [PackedEnsemble, Masksembles, MIMO])
def test_methods_that_shape_the_network_themselves_refuse_a_timm_model_in_one_line(method):
    with pytest.raises(ConfigError, match="ensembled by SingleModel, BatchEnsemble, LowRankEnsemble, DeepEnsemble and MCDropout") as error:
        ensemble(method, RESNET, 0)
    assert "\n" not in str(error.value)


def test_a_missing_timm_is_a_one_line_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[timm\]"') as error:
        ensemble(BatchEnsemble, VIT, 0)
    assert "\n" not in str(error.value)


def test_the_short_spelling_and_bad_options():
    options = backbone_from("timm/resnet18")
    assert isinstance(options, TimmOptions) and options.model_name == "resnet18" and options.model_args == {}
    with pytest.raises(ConfigError, match="num_classes is set by the data"):
        TimmOptions("resnet18", {"num_classes": 3})
    with pytest.raises(ConfigError, match="timm cannot build 'no_such_model'"):
        ensemble(BatchEnsemble, TimmOptions("no_such_model"), 0)


def test_per_member_norms_start_as_timms_norm_in_every_member():
    model, reference = ensemble(BatchEnsemble, VIT, 5, norm="per_member"), timm_model(VIT, 5)
    norm = model.network.blocks[0].norm1
    assert isinstance(norm, EnsembleLayerNorm) and norm.eps == reference.blocks[0].norm1.eps
    torch.testing.assert_close(norm.weight, reference.blocks[0].norm1.weight.expand(M, -1))
    resnet = ensemble(BatchEnsemble, RESNET, 5, norm="per_member")
    assert isinstance(resnet.network.bn1, EnsembleBatchNorm2d)


def test_a_deep_ensemble_of_a_timm_model_is_assembled_from_single_model_checkpoints(tmp_path):
    from tests.methods.test_assemble import trained_singles

    options = dict(input_shape=SHAPE, num_classes=CLASSES, backbone=VIT)
    singles, paths = trained_singles(tmp_path, options, 2)
    model = DeepEnsemble(member_checkpoints=paths, **options).eval()
    x = torch.randn(B, *SHAPE)
    with torch.no_grad():
        logits = model(x)
        for i, single in enumerate(singles):
            torch.testing.assert_close(logits[i], single(x)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointMismatchError, match="x.ckpt does not hold this network's tensors"):
        model.network.fill_member(0, {k: v for k, v in singles[0].network.state_dict().items() if k != "head.bias"}, "x.ckpt")


@pytest.mark.parametrize("norm_class", ["BatchNormAct2d", "LayerNorm2d"])
def test_a_timm_norm_subclass_is_refused_by_per_member_norms_and_shared_otherwise(norm_class):
    """timm's own norm classes (a BatchNorm with its activation, a LayerNorm over NCHW channels) have forwards of
    their own: per-member norms refuse them in one line instead of silently leaving them shared."""
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), getattr(timm.layers, norm_class)(4))

    with pytest.raises(ConfigError, match=f"layer 1 is timm's {norm_class}.*--model.norm shared") as refused:
        convert_layers(model(), batch_ensemble_layers(M, norm="per_member"))
    assert "\n" not in str(refused.value)
    shared = model()
    norm = shared[1]
    converted = convert_layers(shared, batch_ensemble_layers(M, norm="shared"))
    assert isinstance(converted[0], BatchConv2d) and converted[1] is norm  # the one norm all members share, as asked
