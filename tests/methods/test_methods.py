"""The four methods: the (M, B, C) contract, how members are trained, option errors."""

import re
import warnings

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods import BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.methods.checkpoint_state import architecture_differences

MLP = dict(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16, 8))
RESNET = dict(input_shape=(3, 8, 8), num_classes=10, backbone="resnet18")


@pytest.mark.parametrize("cls,members", [(SingleModel, 1), (BatchEnsemble, 3), (DeepEnsemble, 3), (MCDropout, 3)])
def test_forward_returns_member_logits(cls, members):
    kwargs = dict(MLP) if cls is SingleModel else dict(MLP, num_members=members)
    model = cls(**kwargs).eval()
    out = model(torch.randn(5, 1, 8, 8))
    assert out.shape == (members, 5, 10)
    assert model.num_members == members


def test_mc_dropout_samples_differ_in_eval_mode():
    torch.manual_seed(0)
    model = MCDropout(num_members=4, dropout=0.3, **MLP).eval()
    x = torch.randn(6, 1, 8, 8)
    out = model(x)  # (M, B, C)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j]), f"samples {i} and {j} share a dropout mask"
    assert not torch.allclose(model(x), out), "a second call must draw new masks"


def test_mc_dropout_trains_on_one_sample():
    model = MCDropout(num_members=4, **MLP).train()
    assert model.training_batch(torch.randn(5, 1, 8, 8), torch.zeros(5, dtype=torch.long)).logits.shape == (1, 5, 10)


def test_deep_ensemble_loss_gives_each_member_its_solo_gradient():
    """The summed loss must give member i exactly the gradient of training member i alone."""
    torch.manual_seed(0)
    model = DeepEnsemble(num_members=3, **MLP)
    x, y = torch.randn(7, 1, 8, 8), torch.randint(0, 10, (7,))
    model.training_loss(model(x), y).backward()
    first = model.network[1]  # EnsembleLinear after Flatten
    for i in range(3):
        w = first.member_weight(i).detach().requires_grad_()
        # member i alone: the same network with its own weights, written out by hand
        h = x.flatten(1)
        layers = [m for m in model.network if hasattr(m, "member_weight")]
        for k, layer in enumerate(layers):
            weight = w if k == 0 else layer.member_weight(i).detach()
            h = F.linear(h, weight, layer.bias[i].detach())
            if k < len(layers) - 1:
                h = F.relu(h)
        (grad,) = torch.autograd.grad(F.cross_entropy(h, y), w)
        torch.testing.assert_close(first.weight.grad[i], grad)


def test_deep_ensemble_members_start_different():
    model = DeepEnsemble(num_members=2, **MLP)
    first = model.network[1]
    assert not torch.allclose(first.member_weight(0), first.member_weight(1))


def test_batch_ensemble_fast_weight_groups():
    model = BatchEnsemble(num_members=2, fast_weight_lr_scale=0.5, **MLP)
    model.optimizer = lambda groups: torch.optim.SGD(groups, lr=0.1, weight_decay=1e-3)
    optimizer = model.configure_optimizers()
    shared, fast = optimizer.param_groups
    assert shared["lr"] == pytest.approx(0.1) and shared["weight_decay"] == pytest.approx(1e-3)
    assert fast["lr"] == pytest.approx(0.05) and fast["weight_decay"] == 0.0
    fast_ids = {id(p) for p in fast["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in fast_ids) == (name.endswith(".r") or name.endswith(".s")), name


def test_batch_ensemble_keeps_the_fast_weight_rate_under_schedulers():
    model = BatchEnsemble(num_members=2, fast_weight_lr_scale=0.5, **MLP)
    model.optimizer = lambda groups: torch.optim.SGD(groups, lr=0.1)
    model.lr_scheduler = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(3):
        scheduler.step()
        shared, fast = scheduler.optimizer.param_groups
        assert fast["lr"] == pytest.approx(0.5 * shared["lr"]) and shared["lr"] < 0.1

    # OneCycleLR gives every group one absolute rate: refused unless the scale is 1
    model.lr_scheduler = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.raises(ConfigError, match="OneCycleLR sets the same learning rate for every parameter group"):
        model.configure_optimizers()
    model.fast_weight_lr_scale = 1.0
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].optimizer.param_groups[1]["lr"] > 0


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: BatchEnsemble(num_members=0, **MLP), "num_members"),
        (lambda: DeepEnsemble(num_members=-1, **MLP), "num_members"),
        (lambda: MCDropout(dropout=1.0, **MLP), r"\[0, 1\)"),
        (lambda: SingleModel(dropout=-0.1, **MLP), r"\[0, 1\)"),
        (lambda: MCDropout(dropout=0.0, **MLP), "dropout > 0"),
        (lambda: SingleModel(backbone="vgg", **MLP), "allowed: mlp, resnet18"),
        (lambda: SingleModel(**dict(MLP, hidden_sizes=(64, -3))), re.escape("hidden_sizes=[64, -3]")),
        (lambda: BatchEnsemble(**dict(MLP, hidden_sizes=(0,))), re.escape("hidden_sizes=[0]")),
        (lambda: DeepEnsemble(**RESNET, hidden_sizes=(32,)), "--model.hidden_sizes applies to the mlp backbone, not resnet18"),
        (lambda: MCDropout(**MLP, width=8), "--model.width applies to the resnet18 backbone, not mlp"),
        (lambda: SingleModel(**dict(RESNET, width=0)), "width=0"),
    ],
)
def test_bad_options_are_clear_errors(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


# ---- SingleModel and num_members ----------------------------------------------------------------
def test_single_model_accepts_num_members_one_only():
    assert SingleModel(num_members=1, **MLP).num_members == 1
    for bad in (2, 4):
        message = (
            f"SingleModel is one network (M = 1); got --model.num_members {bad}. Drop the option for this "
            "method (a study sets it per method under methods.<name>.args)"
        )
        with pytest.raises(ConfigError, match=re.escape(message)):
            SingleModel(num_members=bad, **MLP)


def test_single_model_num_members_through_the_cli(cli, capsys):
    # --print_config builds the model (options checked) and runs nothing
    with pytest.raises(SystemExit) as exit_one:
        cli("fit", "--model=SingleModel", "--model.num_members=1", "--data=DigitsDataModule", "--print_config")
    assert exit_one.value.code in (0, None)
    assert "num_members: 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_two:
        cli("fit", "--model=SingleModel", "--model.num_members=2", "--data=DigitsDataModule", "--print_config")
    err = capsys.readouterr().err.strip()
    assert exit_two.value.code == 2 and "\n" not in err
    assert err.startswith("ensemble-lab: error: SingleModel is one network (M = 1); got --model.num_members 2.")


def test_deep_ensemble_of_one_member_warns_it_is_a_single_model():
    with pytest.warns(UserWarning, match=r"SingleModel is the M = 1 reference") as record:
        DeepEnsemble(num_members=1, **MLP)
    (warning,) = [w for w in record if "M = 1" in str(w.message)]
    assert "\n" not in str(warning.message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepEnsemble(num_members=2, **MLP)


# ---- backbone options: defaults, hparams, checkpoints --------------------------------------------
def linear_sizes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if hasattr(m, "in_features")]


def test_backbone_options_left_out_take_the_backbones_default():
    mlp = SingleModel(input_shape=(1, 8, 8), num_classes=10)
    assert linear_sizes(mlp) == [(64, 64), (64, 32), (32, 16), (16, 10)]  # 1·8·8 inputs, hidden 64, 32, 16
    resnet = BatchEnsemble(num_members=2, **RESNET)
    assert resnet.network.conv1.weight.shape[0] == 64
    with pytest.warns(UserWarning, match=r"builds a linear model \(no hidden layer\)"):
        assert linear_sizes(SingleModel(**dict(MLP, hidden_sizes=[]))) == [(64, 10)]


@pytest.mark.parametrize(
    "saved,expected",
    [
        # saved with the option left out (None): the backbone's default
        (dict(backbone="mlp", hidden_sizes=None, width=None), [(64, 64), (64, 32), (32, 16), (16, 10)]),
        # written before options were per backbone: both options, the unused one at its default
        (dict(backbone="mlp", hidden_sizes=[16, 8], width=64), [(64, 16), (16, 8), (8, 10)]),
    ],
)
def test_saved_hparams_rebuild_the_network(saved, expected):
    hparams = dict(num_members=1, dropout=0.0, num_classes=10, input_shape=[1, 8, 8], channels_last=False, compile=False, **saved)
    model = SingleModel(**hparams)
    assert linear_sizes(model) == expected
    SingleModel(**dict(model.hparams)).load_state_dict(model.state_dict(), strict=True)


def test_resnet_hparams_of_older_checkpoints_load():
    trained = SingleModel(**RESNET, width=4)
    new_style = {k: v for k, v in trained.hparams.items() if k != "backbone"}
    old = dict(new_style, backbone="resnet18", hidden_sizes=[64, 32, 16], width=4)  # an older run recorded both
    SingleModel(**old).load_state_dict(trained.state_dict(), strict=True)
    assert SingleModel(**dict(old, width=None)).network.conv1.weight.shape[0] == 64


def test_checkpoint_compare_resolves_options_left_out():
    mlp = dict(backbone="mlp", input_shape=[1, 8, 8])
    assert architecture_differences(dict(mlp, hidden_sizes=None, width=None), dict(mlp, hidden_sizes=[64, 32, 16], width=None)) == ("", "")
    resnet = dict(backbone="resnet18", input_shape=[3, 8, 8])
    older = dict(resnet, hidden_sizes=[64, 32, 16], width=64)
    assert architecture_differences(older, dict(resnet, hidden_sizes=None, width=None)) == ("", "")
    assert architecture_differences(older, dict(resnet, hidden_sizes=None, width=32)) == (", backbone.width=64", ", backbone.width=32")


# ---- the logged training loss --------------------------------------------------------------------
def _fit_one_epoch(model, x, y, batch_size, root) -> L.Trainer:
    """One quiet CPU epoch of ``model`` on (x, y), no validation, logger or checkpoints; the trainer, for its metrics."""
    trainer = L.Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=batch_size))
    return trainer


@pytest.mark.parametrize("cls", [DeepEnsemble, BatchEnsemble])
def test_logged_training_loss_is_the_mean_member_loss(cls, tmp_path):
    """Curves compare across methods: DeepEnsemble trains on the sum but logs the mean over members."""
    torch.manual_seed(0)
    model = cls(num_members=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), **MLP)  # lr 0: weights stay
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    trainer = _fit_one_epoch(model, x, y, batch_size=12, root=tmp_path)
    with torch.no_grad():
        logits = model(x)  # (M, B, C)
    per_member = [float(F.cross_entropy(logits[m], y)) for m in range(3)]
    expected = sum(per_member) / 3
    assert float(trainer.callback_metrics["train/loss_epoch"]) == pytest.approx(expected, rel=1e-6)
    assert float(trainer.callback_metrics["train/loss_step"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("own_rows", [False, True], ids=["labels-N", "labels-MN"])
def test_deep_ensemble_loss_is_the_sum_of_a_per_member_cross_entropy_loop(own_rows):
    """The sum over members of each member's mean loss (what each member would get trained alone)."""
    gen = torch.Generator().manual_seed(1)
    model = DeepEnsemble(num_members=3, **MLP)
    logits = torch.randn(3, 7, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 7) if own_rows else (7,), generator=gen)
    expected = sum(F.cross_entropy(logits[m], y[m] if own_rows else y) for m in range(3))
    torch.testing.assert_close(model.training_loss(logits, y), expected, rtol=1e-12, atol=0)


def test_train_acc_is_the_ensembles_accuracy(tmp_path):
    """train/acc counts the rows the mean of the members' probabilities gets right (lr 0: the weights stay)."""
    torch.manual_seed(2)
    model = DeepEnsemble(num_members=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), **MLP)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    trainer = _fit_one_epoch(model, x, y, batch_size=6, root=tmp_path)
    with torch.no_grad():
        probs = model(x).softmax(-1).numpy()  # (M, B, C)
    expected = (probs.mean(0).argmax(-1) == y.numpy()).mean()
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.backbone.hidden_sizes=[64,-3]"], "hidden_sizes=[64, -3]: every hidden layer needs a positive integer number of units"),
        (["--model.backbone.hidden_sizes=[0]"], "hidden_sizes=[0]: every hidden layer needs a positive integer number of units"),
        (["--model.backbone=resnet18", "--model.backbone.hidden_sizes=[32]"], "ResNet18Options has no argument 'hidden_sizes'; ResNet18Options accepts: width"),
        (["--model.backbone.width=8"], "MLPOptions has no argument 'width'; MLPOptions accepts: hidden_sizes"),
    ],
    ids=["negative-size", "zero-size", "hidden_sizes-for-resnet18", "width-for-mlp"],
)
def test_bad_backbone_options_are_one_line_through_the_cli(cli, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model=BatchEnsemble", "--data=DigitsDataModule", *args, "--print_config")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert message in err
