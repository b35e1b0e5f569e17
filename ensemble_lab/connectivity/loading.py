"""Loading a run for ``ensemble-lab connectivity``: its model and data as ``test`` builds them, the set to
evaluate on, the fixed training batches that re-estimate BatchNorm statistics, and the device."""

import sys
from pathlib import Path

import torch
from torch import Tensor

from ensemble_lab.config.lightning_cli import EnsembleLabCLI, quiet_known_warnings
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.nn import weights_from_checkpoint
from ensemble_lab.runs.checkpoint_files import load_checkpoint

#: the name --set gives the validation split (held out of the training set)
VALIDATION = "val"


class _LoadRun(EnsembleLabCLI):
    """Parse a run's config as ``test`` would and build its model and datamodule; no trainer, nothing run."""

    checking_only = True


def load_run(config_path: str | Path) -> tuple[EnsembleModule, EnsembleDataModule]:
    """(model, datamodule) built from ``config_path`` exactly as ``ensemble-lab test --config`` builds them."""
    quiet_known_warnings()
    with weights_from_checkpoint():  # load_weights replaces every weight: a timm backbone fetches no pretrained ones
        loaded = _LoadRun(args=["test", "--config", str(config_path)])
    return loaded.model, loaded.datamodule


def evaluation_sets(datamodule: EnsembleDataModule) -> list[str]:
    """The sets --set accepts: the validation split, then every labelled (id or shift) test set."""
    return [VALIDATION, *(name for name, role in datamodule.test_set_roles.items() if role != "ood")]


def check_set(set_name: str | None, datamodule: EnsembleDataModule) -> str:
    """The set ``--set set_name`` walks on (None: the validation split); a ConfigError for a set the datamodule lacks."""
    name = set_name or VALIDATION
    if name not in (available := evaluation_sets(datamodule)):
        raise ConfigError(f"--set {name!r} is not a labelled set of {type(datamodule).__name__}; choose one of: {', '.join(available)}")
    return name


def set_data(datamodule: EnsembleDataModule, name: str) -> LabeledImages:
    """The images and labels of set ``name`` (``VALIDATION``: the validation split)."""
    if name == VALIDATION:
        datamodule.setup("fit")
        assert datamodule.val_set is not None, "setup('fit') cuts the validation split"
        return datamodule.val_set
    datamodule.setup("test")
    return datamodule.test_sets[name]


def training_batches(datamodule: EnsembleDataModule, count: int, seed: int) -> list[Tensor]:
    """``count`` batches of ``batch_size`` training images (fewer if the split is short), drawn without
    replacement in a seeded order and preprocessed without augmentation: the same batches every call."""
    datamodule.setup("fit")
    train = datamodule.train_set
    assert train is not None, "setup('fit') loads the training split"
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    size = datamodule.batch_size
    chosen = order[: count * size]
    return [datamodule.preprocess(train.images[chosen[k : k + size]], train=False) for k in range(0, len(chosen), size)]


def resolve_device(device: str) -> torch.device:
    """``--device`` as a torch device; a ConfigError for a name torch does not know or a CUDA device this machine lacks."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; give auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and (not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); give auto or cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: connectivity runs on cpu or cuda")
    return resolved


def load_weights(model: EnsembleModule, config_path: str | Path, ckpt_path: str | Path | None, quiet: bool) -> tuple[str | Path | None, int]:
    """Load the run's trained weights into ``model``: (the checkpoint read, its training step).

    ``ckpt_path`` None: the run's own ``checkpoints/last.ckpt`` beside ``config_path``, or nothing for a Deep Ensemble
    assembled from ``model.member_checkpoints`` (its members are loaded already); a ConfigError when neither exists.
    """
    own = Path(config_path).parent / "checkpoints" / "last.ckpt"  # the run's final weights, beside its config.yaml
    if ckpt_path is None and not getattr(model, "member_checkpoints", None) and own.is_file():
        ckpt_path = own
        if not quiet:
            print(f"connectivity of {own} (the run's last checkpoint; --ckpt_path picks another)", file=sys.stderr)
    if ckpt_path is None:
        if not getattr(model, "member_checkpoints", None):
            raise ConfigError(f"connectivity needs trained weights: {own} does not exist; pass --ckpt_path <run>/checkpoints/<file>.ckpt")
        return None, 0
    checkpoint = load_checkpoint(ckpt_path, "checkpoint" if ckpt_path is own else "--ckpt_path")
    model.check_checkpoint(checkpoint, str(ckpt_path))
    model.load_state_dict(checkpoint["state_dict"])
    return ckpt_path, int(checkpoint.get("global_step", 0))
