"""The ViT backbone: parameter counts against formulas, members against hand-built plain ViTs (forward and
gradients), token layers against per-member loops, pooling, and every method on a tiny digits-shaped ViT."""

import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ensemble_lab import methods
from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.evaluation.member_networks import member_states
from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, LowRankEnsemble, Masksembles, MCDropout, PackedEnsemble, SingleModel
from ensemble_lab.methods.checkpoint_state import architecture
from ensemble_lab.nn import (
    BACKBONES,
    BatchLinear,
    EnsembleLayerNorm,
    EnsembleLinear,
    GroupedLinear,
    LowRankLinear,
    MemberMasks,
    ViT,
    ViTOptions,
    build_backbone,
    plain_layers,
)
from ensemble_lab.nn.attention import TokenMasks
from ensemble_lab.nn.tokens import EnsembleTokenEmbedding

CIFAR = {"backbone": "vit", "input_shape": (3, 32, 32), "num_classes": 10}  # the defaults: patch 4, D 192, depth 12, 3 heads
TINY_VIT = {"patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2}


def tiny(**vit_options) -> dict:
    """A model's options for a tiny ViT on 8x8 digits; ``vit_options`` change the ViT's own (``--model.backbone.*``)."""
    return {"backbone": ViTOptions(**{**TINY_VIT, **vit_options}), "input_shape": (1, 8, 8), "num_classes": 10}


TINY = tiny()


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear_shapes(c: int, p: int, d: int, hidden: int, depth: int, classes: int) -> list[tuple[int, int]]:
    """(in, out) of every linear of a ViT, in order: patch embedding, per block qkv, proj, fc1, fc2, then the head."""
    return [(c * p * p, d)] + [(d, 3 * d), (d, d), (d, hidden), (hidden, d)] * depth + [(d, classes)]


def single_vit_count(c=3, size=32, p=4, d=192, depth=12, classes=10, mlp_ratio=4, cls=True) -> int:
    """Written from the architecture: linears with biases, 2 LayerNorms per block and a final one (scale and
    shift), a class token, a position embedding per token."""
    tokens = (size // p) ** 2 + cls
    linears = sum(i * o + o for i, o in linear_shapes(c, p, d, d * mlp_ratio, depth, classes))
    return linears + (2 * depth + 1) * 2 * d + cls * d + tokens * d


def test_single_vit_at_cifar10_has_timm_vit_tiny_parameter_count():
    # timm's vit_tiny_patch16_224(img_size=32, patch_size=4, num_classes=10) has 5,362,762 parameters
    assert single_vit_count() == 5_362_762
    assert count(SingleModel(**CIFAR)) == single_vit_count()


def test_method_parameter_counts_at_cifar10_against_formulas():
    m, d, shapes = 4, 192, linear_shapes(3, 4, 192, 768, 12, 10)
    single = single_vit_count()
    # BatchEnsemble: the shared W of every linear, plus r (M, in), s (M, out) and a bias per member (M, out)
    assert count(BatchEnsemble(num_members=m, **CIFAR)) == single + sum(m * i + 2 * m * o - o for i, o in shapes)
    # LowRank: the shared W, plus A (M, out, k), B (M, k, in) and a bias per member
    k = 2
    assert count(LowRankEnsemble(num_members=m, rank=k, **CIFAR)) == single + sum(m * k * (i + o) + m * o - o for i, o in shapes)
    assert count(DeepEnsemble(num_members=m, **CIFAR)) == m * single
    # Packed-Ensembles α = 2, M = 4, γ = 1: M independent ViTs of α·D/M = 96 features per token
    assert count(PackedEnsemble(num_members=m, alpha=2.0, **CIFAR)) == m * single_vit_count(d=d // 2)
    # LowRank on attention only (LoRA-Ensemble): factors and member biases on qkv, proj of every block and the head
    adapted = [(d, 3 * d), (d, d)] * 12 + [(d, 10)]
    attention_only = LowRankEnsemble(num_members=m, rank=k, adapters="attention", **CIFAR)
    assert count(attention_only) == single + sum(m * k * (i + o) + m * o - o for i, o in adapted)
    assert sum(isinstance(layer, LowRankLinear) for layer in attention_only.modules()) == len(adapted)
    # per-member LayerNorms add (M - 1)·2D per norm
    per_member = count(BatchEnsemble(num_members=m, norm="per_member", **CIFAR)) - count(BatchEnsemble(num_members=m, **CIFAR))
    assert per_member == (2 * 12 + 1) * (m - 1) * 2 * d


def test_low_rank_attention_adapters_leave_the_other_linears_shared_and_members_match_a_loop():
    model = LowRankEnsemble(num_members=2, factor_init="small", adapters="attention", **TINY).eval()
    blocks = model.network.blocks
    assert type(blocks[0].mlp.fc1) is nn.Linear and type(model.network.patch_embed) is nn.Linear
    assert isinstance(blocks[0].attention.qkv, LowRankLinear) and isinstance(model.network.head, LowRankLinear)
    x = torch.randn(3, 1, 8, 8)
    plain = model.member_network().eval()
    with torch.no_grad():
        logits = model(x)
        for i, state in enumerate(member_states(model.network, plain, 2, "LowRankEnsemble")):
            plain.load_state_dict(state)
            torch.testing.assert_close(logits[i], plain(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="adapters attention puts the factors on attention's projections"):
        LowRankEnsemble(num_members=2, adapters="attention")  # the MLP backbone has no attention


def test_packed_gamma_2_splits_every_hidden_linear_in_blocks():
    m, d = 2, 16  # members of α·16/M = 16 features; γ = 2: qkv, proj, fc1, fc2 hold half their weights
    model = PackedEnsemble(num_members=m, alpha=2.0, gamma=2, **TINY)
    blocks = 2 * sum(i * o // 2 + o for i, o in [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)])  # 2 blocks
    dense = (1 * 2 * 2 * d + d) + (d * 10 + 10)  # patch embedding and head: one group per member, with biases
    norms_and_tokens = (2 * 2 + 1) * 2 * d + d + 17 * d  # 5 LayerNorms, class token, 16 + 1 positions
    assert count(model) == m * (blocks + dense + norms_and_tokens)


# ---- members against hand-built plain ViTs -----------------------------------------------------------
def hand_state(network: nn.Module, i: int) -> dict[str, torch.Tensor]:
    """Member i's tensors, computed here from the stored ones (autograd kept): the plain ViT's state."""
    state = {}
    for name, layer in network.named_modules():
        own = dict(layer.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(layer, BatchLinear):
            r, s = layer.r.reshape(layer.num_members, -1, layer.in_features), layer.s.reshape(layer.num_members, -1, layer.out_features)
            tensors = {"weight": layer.weight * torch.einsum("ko,ki->oi", s[i], r[i]), "bias": layer.bias[i]}
        elif isinstance(layer, LowRankLinear):
            tensors = {"weight": layer.weight + layer.scaling * layer.A[i] @ layer.B[i], "bias": layer.bias[i]}
        elif isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
            tensors = {"weight": layer.weight[i], "bias": layer.bias[i]}
        elif isinstance(layer, EnsembleTokenEmbedding):
            tensors = {key: t[i : i + 1] for key, t in own.items()}
        else:  # shared by every member
            tensors = own
        state.update({f"{name}.{key}": t for key, t in tensors.items()})
    return state


MEMBER_CASES = {
    "batch_ensemble": lambda: BatchEnsemble(num_members=3, **TINY),
    "batch_ensemble_rank2_per_member_norm": lambda: BatchEnsemble(num_members=2, rank=2, norm="per_member", **TINY),
    "low_rank": lambda: LowRankEnsemble(num_members=3, rank=2, factor_init="small", **TINY),
    "deep_ensemble": lambda: DeepEnsemble(num_members=3, **TINY),
    "deep_ensemble_mean_pooling": lambda: DeepEnsemble(num_members=2, **tiny(pooling="mean")),
    "packed": lambda: PackedEnsemble(num_members=2, alpha=2.0, **TINY),
    "packed_gamma_2": lambda: PackedEnsemble(num_members=2, alpha=2.0, gamma=2, **TINY),
}


@pytest.mark.parametrize("case", MEMBER_CASES)
def test_members_forward_and_gradients_equal_a_loop_over_plain_vits(case):
    torch.manual_seed(0)
    model = MEMBER_CASES[case]().double().eval()
    with torch.no_grad():  # members differ already: every per-member tensor moved away from its init
        for layer in model.modules():
            for p in getattr(layer, "member_parameters", list)():
                p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,))
    logits = model(x)  # (M, B, C)
    ours = torch.autograd.grad(sum(F.cross_entropy(z, y) for z in logits), list(model.parameters()))
    plain = model.member_network().double().eval()
    member_logits = [functional_call(plain, hand_state(model.network, i), (x,)) for i in range(model.num_members)]
    theirs = torch.autograd.grad(sum(F.cross_entropy(z, y) for z in member_logits), list(model.parameters()))
    for i, z in enumerate(member_logits):
        torch.testing.assert_close(logits[i], z, rtol=0, atol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
    assert not torch.allclose(logits[0], logits[1])  # a wrong member would show


# ---- token layers against per-member loops ------------------------------------------------------------
def test_per_member_layer_norm_equals_a_loop_of_layer_norms():
    m, b, t, d = 3, 2, 5, 8
    norm = EnsembleLayerNorm(d, eps=1e-6, num_members=m)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(m * b, t, d)
    expected = torch.cat([F.layer_norm(x[i * b : (i + 1) * b], (d,), norm.weight[i], norm.bias[i], 1e-6) for i in range(m)])
    torch.testing.assert_close(norm(x), expected)
    plain = nn.LayerNorm(d, eps=1e-6)
    plain.load_state_dict(norm.member_state(1))
    torch.testing.assert_close(plain(x[b : 2 * b]), expected[b : 2 * b])


LINEARS = {
    "batch_rank1": lambda: BatchLinear(6, 4, 3),
    "low_rank": lambda: LowRankLinear(6, 4, 3, rank=2, factor_init="small"),
    "ensemble": lambda: EnsembleLinear(6, 4, 3),
    "ensemble_grouped": lambda: EnsembleLinear(6, 4, 3, groups=2),
}


@pytest.mark.parametrize("name", LINEARS)
def test_member_linears_on_token_tensors_equal_each_members_own_linear(name):
    torch.manual_seed(0)
    layer, (m, b, t) = LINEARS[name](), (3, 2, 5)
    x = torch.randn(m * b, t, 6)  # (M*B, T, in)
    out = layer(x)
    for i in range(m):
        state = layer.member_state(i)
        if name == "ensemble_grouped":  # block-diagonal: block j of the output reads block j of the input
            w = torch.block_diag(*state["weight"].view(2, 2, 3))
            expected = F.linear(x[i * b : (i + 1) * b], w, state["bias"])
        else:
            expected = F.linear(x[i * b : (i + 1) * b], state["weight"], state["bias"])
        torch.testing.assert_close(out[i * b : (i + 1) * b], expected)


def test_shared_input_linear_and_grouped_linear_take_token_tensors():
    torch.manual_seed(0)
    layer, x = EnsembleLinear(6, 4, 3, shared_input=True), torch.randn(2, 5, 6)  # (B, T, in) untiled
    out = layer(x)  # (M*B, T, out)
    for i in range(3):
        torch.testing.assert_close(out[2 * i : 2 * i + 2], F.linear(x, layer.weight[i], layer.bias[i]))
    grouped = GroupedLinear(6, 4, groups=2)
    dense = torch.block_diag(*grouped.weight.view(2, 2, 3))  # (4, 6)
    torch.testing.assert_close(grouped(x), F.linear(x, dense, grouped.bias))


def test_token_masks_multiply_each_members_tokens_by_its_mask():
    m, b, t, d = 2, 3, 4, 12
    masks = MemberMasks(d, m, scale=2.0)
    x = torch.randn(m * b, t, d)
    out = TokenMasks(masks)(x)
    for i in range(m):
        torch.testing.assert_close(out[i * b : (i + 1) * b], x[i * b : (i + 1) * b] * masks.masks[i].float())


# ---- pooling, options, every method ---------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_head_reads_the_class_token_or_the_mean_of_the_tokens(pooling):
    torch.manual_seed(0)
    network = build_backbone("vit", plain_layers(), (1, 8, 8), 10, **TINY_VIT, pooling=pooling)
    seen = {}
    network.norm.register_forward_hook(lambda module, args, out: seen.update(tokens=out))
    logits = network(torch.randn(3, 1, 8, 8))
    tokens = seen["tokens"]  # (B, T', D): 17 tokens with the class token first, 16 without
    assert tokens.shape[1] == (17 if pooling == "cls" else 16)
    pooled = tokens[:, 0] if pooling == "cls" else tokens.mean(1)
    torch.testing.assert_close(logits, network.head(pooled))
    assert count(network) == single_vit_count(c=1, size=8, p=2, d=16, depth=2, cls=pooling == "cls")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"patch_size": 3}, "--model.backbone.patch_size 3 does not divide the 8x8 images"),
        ({"embed_dim": 15}, "--model.backbone.embed_dim 15 does not split into --model.backbone.num_heads 2 heads"),
        ({"pooling": "max"}, "--model.backbone.pooling 'max' is not known; allowed: cls, mean"),
        ({"depth": 0}, "--model.backbone.depth must be an integer >= 1"),
        ({"hidden_sizes": [8]}, "--model.hidden_sizes applies to the mlp backbone, not vit"),
    ],
)
def test_bad_vit_options_are_one_line_config_errors(options, message):
    own = {k: v for k, v in options.items() if k in BACKBONES["vit"].options}  # the ViT's; hidden_sizes: an old flat option
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SingleModel(**tiny(**own), **{k: v for k, v in options.items() if k not in own})


METHODS = {
    "single": lambda: SingleModel(**TINY),
    "batch_ensemble": lambda: BatchEnsemble(num_members=2, **TINY),
    "deep_ensemble": lambda: DeepEnsemble(num_members=2, **TINY),
    "low_rank": lambda: LowRankEnsemble(num_members=2, **TINY),
    "packed": lambda: PackedEnsemble(num_members=2, alpha=2.0, **TINY),
    "mc_dropout": lambda: MCDropout(num_members=2, dropout=0.1, **tiny(attention_dropout=0.1)),
    "masksembles": lambda: Masksembles(num_members=2, **TINY),
    "mimo": lambda: MIMO(num_members=2, **TINY),
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_tiny_digits_vit(method):
    torch.manual_seed(0)
    model = METHODS[method]()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    step = model.training_batch(x, y)
    model.training_loss(step.logits, step.targets).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    logits = model(x)
    assert logits.shape == (model.num_members, 4, 10) and torch.isfinite(logits).all()


def test_masksembles_masks_the_vits_token_features():
    model = Masksembles(num_members=2, mask_placement="block_outputs", **TINY)
    sites = [name for name, module in model.network.named_modules() if isinstance(module, MemberMasks)]
    assert sites == ["blocks.0.mlp.masks.layer", "blocks.0.member_masks.layer", "blocks.1.mlp.masks.layer",
                     "blocks.1.member_masks.layer", "head_masks"]


def test_mc_dropout_keeps_attention_dropout_on_at_test_time():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    mc = MCDropout(num_members=2, **tiny(attention_dropout=0.5)).eval()
    assert not torch.equal(mc(x), mc(x))  # a fresh draw every call
    single = SingleModel(**tiny(attention_dropout=0.5)).eval()
    torch.testing.assert_close(single(x), single(x), rtol=0, atol=0)  # ordinary dropout: off in eval


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*/vit/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_shipped_vit_configs_build_the_vit_they_document(config):
    model = yaml.safe_load(config.read_text())["model"]
    options = {k: v for k, v in model["init_args"].items() if k not in ("optimizer", "lr_scheduler")}
    digits = config.parent.parent.name == "digits"
    shape = (1, 8, 8) if digits else (3, 32, 32)
    network = getattr(methods, model["class_path"])(**options, input_shape=shape, num_classes=10)
    vit = network.network
    assert isinstance(vit, ViT) and len(vit.blocks) == options["backbone"]["init_args"]["depth"]
    if not digits and model["class_path"] == "SingleModel":
        assert count(network) == single_vit_count()  # the documented ViT-Tiny layout


@pytest.mark.parametrize("case", MEMBER_CASES)
def test_each_layers_member_state_fills_the_member_network(case):
    # the protocol connectivity and the weight cosine use: member_network() filled from every layer's member_state(i)
    torch.manual_seed(1)
    model = MEMBER_CASES[case]().double().eval()
    with torch.no_grad():
        for layer in model.modules():
            for p in getattr(layer, "member_parameters", list)():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
        logits = model(x)
        plain = model.member_network().double().eval()
        for i, state in enumerate(member_states(model.network, plain, model.num_members, case)):
            plain.load_state_dict(state)
            torch.testing.assert_close(plain(x), logits[i], rtol=0, atol=1e-10)


# ---- the options object: CLI spelling, checkpoints ----------------------------------------------------------
def test_the_cli_spells_the_vit_as_a_backbone_with_its_own_options(cli, capsys):
    args = ["--model.backbone=vit", "--model.backbone.patch_size=2", "--model.backbone.embed_dim=24", "--model.backbone.mlp_ratio=1.5"]
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=BatchEnsemble", "--data=DigitsDataModule", *args, "--model.backbone.pooling=mean", "--print_config")
    assert exit_info.value.code == 0
    backbone = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["backbone"]
    expected = {"patch_size": 2, "embed_dim": 24, "depth": 12, "num_heads": 3, "mlp_ratio": 1.5, "pooling": "mean", "attention_dropout": 0.0}
    assert backbone == {"class_path": "ensemble_lab.nn.ViTOptions", "init_args": expected}
    with pytest.raises(SystemExit) as exit_info:  # never a flat model option
        cli("fit", "--model=BatchEnsemble", "--data=DigitsDataModule", "--model.backbone=vit", "--model.embed_dim=16", "--print_config")
    assert exit_info.value.code == 2


def test_a_vit_checkpoint_loads_and_a_mismatch_names_the_backbone_option(tmp_path):
    torch.manual_seed(0)
    model = SingleModel(**tiny(mlp_ratio=1.5, pooling="mean")).eval()
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}, path)
    checkpoint = torch.load(path, weights_only=True)  # plain values: the float ratio and the pooling name as they are
    options = {"patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 1.5, "pooling": "mean", "attention_dropout": 0.0}
    assert architecture(checkpoint["hyper_parameters"])["backbone"] == {"class_path": "ensemble_lab.nn.ViTOptions", "init_args": options}
    loaded = SingleModel.load_from_checkpoint(path, weights_only=True).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for change, named in [({"embed_dim": 8}, "backbone.embed_dim=16"), ({"pooling": "cls"}, "backbone.pooling=mean")]:
        other = SingleModel(**tiny(**{"mlp_ratio": 1.5, "pooling": "mean", **change}))
        with pytest.raises(CheckpointMismatchError, match=re.escape(f"num_classes=10, {named}; this run builds")):
            other.check_checkpoint(checkpoint, str(path))
