"""GPU speed options, each run on CPU: bf16 autocast (bf16-mixed precision), channels_last, torch.compile."""

import math
import shutil

import pytest
import torch

from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, LowRankEnsemble, Masksembles, MCDropout, PackedEnsemble, SingleModel
from ensemble_lab.nn import ViTOptions
from tests.conftest import TINY_TRAINER, read_results, run_dirs

RESNET = dict(num_classes=10, input_shape=(3, 8, 8), backbone="resnet18", width=4)
CLI_RESNET = ["--data=DigitsDataModule", "--model.backbone=resnet18", "--model.backbone.width=4", "--seed_everything=7", "--figures=false"]


def assert_sane_results(run) -> None:
    results = read_results(run)
    for name, metrics in results["sets"].items():
        for key in ("acc", "nll", "ece", "mi"):
            assert math.isfinite(metrics[key]), (name, key)


@pytest.mark.parametrize("method", ["DeepEnsemble", "MCDropout"])
def test_channels_last_through_the_cli(cli, tmp_path, method):
    cli("fit", f"--model={method}", "--model.num_members=2", "--model.channels_last=true", *CLI_RESNET, *TINY_TRAINER)
    (run,) = run_dirs(tmp_path)
    assert_sane_results(run)


METHODS = [(SingleModel, {}), (BatchEnsemble, dict(num_members=2)), (DeepEnsemble, dict(num_members=2)), (MCDropout, dict(num_members=2))]
BACKBONES = {
    "mlp": dict(num_classes=10, input_shape=(1, 8, 8), hidden_sizes=(16, 8)),
    "resnet18": RESNET,
    "vit": dict(num_classes=10, input_shape=(1, 8, 8), backbone=ViTOptions(patch_size=2, embed_dim=16, depth=2, num_heads=2)),
}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("cls,options", METHODS, ids=[cls.__name__ for cls, _ in METHODS])
def test_bf16_autocast_forward_is_bf16_and_close_to_float32(cls, options, backbone):
    """What --trainer.precision bf16-mixed runs: every layer computes in bf16, nothing promotes back."""
    torch.manual_seed(0)
    model = cls(**BACKBONES[backbone], **options).eval()
    x = torch.randn(6, *BACKBONES[backbone]["input_shape"])
    with torch.no_grad():
        torch.manual_seed(1)  # MC Dropout: the same masks in both
        expected = model(x)  # float32
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    # bf16 keeps 8 bits of mantissa (relative step 2**-8 ≈ 0.4%); errors add up over the layers
    scale = float(expected.abs().max())
    torch.testing.assert_close(got.float(), expected, rtol=5e-2, atol=5e-2 * scale)


@pytest.mark.parametrize(
    "cls,options",
    [
        (SingleModel, {}),
        (BatchEnsemble, dict(num_members=2)),
        (BatchEnsemble, dict(num_members=2, perturbation="kernel")),  # r is 4-D (M, Cin, kh, kw), not a kernel
        (BatchEnsemble, dict(num_members=2, perturbation="kernel", rank=2)),
        (DeepEnsemble, dict(num_members=2)),
        (MCDropout, dict(num_members=2)),
        (LowRankEnsemble, dict(num_members=2)),
        (PackedEnsemble, dict(num_members=2)),
        (MIMO, dict(num_members=2)),
        (Masksembles, dict(num_members=2, width=16)),  # distinct masks need layers of 10 channels or more
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_channels_last_changes_memory_order_not_values(cls, options):
    torch.manual_seed(0)
    plain = cls(**{**RESNET, **options})
    fast = cls(**{**RESNET, **options}, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    kernels = [p for name, p in fast.named_parameters() if p.dim() == 4 and name.endswith(".weight")]  # (M, ...) 5-D: NCHW
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    x = torch.randn(5, 3, 8, 8)
    torch.manual_seed(1)  # MC Dropout: the same masks in both
    expected = plain(x)
    torch.manual_seed(1)
    torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))), reason="TorchInductor on CPU needs a C++ compiler")
def test_compile_fits_and_keeps_checkpoint_names(cli, tmp_path, monkeypatch):
    """A tiny MLP only: compiling on CPU costs ~20 s per graph (a ResNet takes minutes)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cli(
        "fit", "--model=BatchEnsemble", "--model.num_members=2", "--model.backbone.hidden_sizes=[16]", "--model.compile=true",
        "--data=DigitsDataModule", "--seed_everything=7", "--test_after_fit=false", "--trainer.limit_val_batches=0",
        *TINY_TRAINER,
    )
    (run,) = run_dirs(tmp_path)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    # the same names as an uncompiled model: checkpoints move freely between the two
    eager = BatchEnsemble(num_members=2, hidden_sizes=(16,), num_classes=10, input_shape=(1, 8, 8))
    eager.load_state_dict(checkpoint["state_dict"], strict=True)
    assert all(torch.isfinite(p).all() for p in eager.parameters())
