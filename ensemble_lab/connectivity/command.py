"""``ensemble-lab connectivity``: linear mode connectivity between the members of a trained run.

Loads the run the way ``test`` does (its config.yaml and a checkpoint checked against it), walks
the straight line between every pair of members in weight space and writes connectivity.json, a
figure (PNG and TensorBoard) and a table of barriers; see docs/connectivity.md.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.config.lightning_cli import EnsembleLabCLI, quiet_known_warnings
from ensemble_lab.connectivity.barriers import BARRIERS, all_pairs, connectivity_figure, format_barriers, grid, norm_layers
from ensemble_lab.data.base import EnsembleDataModule, LabeledImages
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import has_member_layers, member_states
from ensemble_lab.figures.per_run import save_png
from ensemble_lab.io import atomic_write_bytes, first_free_number
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.runs.checkpoint_files import load_checkpoint
from ensemble_lab.runs.layout import run_dir_of_checkpoint
from ensemble_lab.runs.results import _json_ready

#: the name --set gives the validation split (held out of the training set)
VALIDATION = "val"


class _LoadRun(EnsembleLabCLI):
    """Parse a run's config as ``test`` would and build its model and datamodule; no trainer, nothing run."""

    checking_only = True


def load_run(config_path: str | Path) -> tuple[EnsembleModule, EnsembleDataModule]:
    """(model, datamodule) built from ``config_path`` exactly as ``ensemble-lab test --config`` builds them."""
    quiet_known_warnings()
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


def _set_data(datamodule: EnsembleDataModule, name: str) -> LabeledImages:
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


def _document(model: EnsembleModule, set_name: str, t: list[float], reset_norm: bool, checkpoint: str | None) -> dict[str, Any]:
    return {"method": type(model).__name__, "num_members": int(model.num_members), "set": set_name, "points": len(t), "t": t,
            "reset_norm": reset_norm, "checkpoint": checkpoint, "applicable": True, "reason": None, "pairs": [],
            **{f"{key}_{stat}": None for key in BARRIERS for stat in ("mean", "std")}, "norm_batches": 0}  # fmt: skip


def _not_applicable(model: EnsembleModule) -> str | None:
    """Why the run has no path between members to walk, or None."""
    method = type(model).__name__
    if model.num_members < 2:
        return f"{method} has {model.num_members} member: there is no pair of members to connect"
    if not has_member_layers(model.network):
        return f"{method}'s members share every weight (one network): there is no path between members to walk"
    return None


def _write_tensorboard(log_dir: Path, document: dict[str, Any], figure: Figure, step: int) -> None:
    """``figure`` and the mean barriers into the TensorBoard events of ``log_dir`` (skipped without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # an optional dependency
    except ImportError:  # TensorBoard is optional for Lightning; the PNG and the JSON are written regardless
        return
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_figure(f"connectivity/{document['set']}", figure, global_step=step, close=False)
        for key in (f"{barrier}_mean" for barrier in BARRIERS):
            if document[key] is not None:
                writer.add_scalar(f"connectivity/{document['set']}/{key}", document[key], global_step=step)


def _walk(
    model: EnsembleModule,
    datamodule: EnsembleDataModule,
    set_name: str,
    t: list[float],
    norm_batches: int,
    norm_seed: int,
    device: str,
    show_progress: bool | None,
) -> dict[str, Any]:
    """The curves and barriers of every pair of members (``norm_batches`` 0: statistics interpolated, not re-estimated)."""
    run_on = resolve_device(device)
    plain = model.member_network().to(run_on)
    states = member_states(model.network, plain, model.num_members, type(model).__name__)
    states = [{k: v.to(run_on) for k, v in state.items()} for state in states]
    data = _set_data(datamodule, set_name)
    evaluated = (datamodule.preprocess(data.images.to(run_on), train=False), data.labels.to(run_on))
    batches = [b.to(run_on) for b in training_batches(datamodule, norm_batches, norm_seed)] if norm_batches and norm_layers(plain) else []
    progress = show_progress if show_progress is not None else sys.stderr.isatty()
    return {"norm_batches": len(batches), **all_pairs(plain, states, t, evaluated, datamodule.eval_batch_size, batches, progress)}


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


def keep_previous(out_dir: Path) -> Path | None:
    """An earlier connectivity.json and figure of ``out_dir`` renamed to connectivity.prev-N.* (N = 1, 2, ...), so a
    second walk (other points, another set) never replaces the first; returns the kept json, or None."""
    old, figure = out_dir / "connectivity.json", out_dir / "figures" / "connectivity.png"
    if not old.exists():
        return None
    n = first_free_number(lambda k: (out_dir / f"connectivity.prev-{k}.json").exists())
    if figure.exists():
        os.replace(figure, figure.with_name(f"connectivity.prev-{n}.png"))
    kept = out_dir / f"connectivity.prev-{n}.json"
    os.replace(old, kept)
    return kept


def run_connectivity(
    config_path: str | Path,
    ckpt_path: str | Path | None = None,
    points: int = 11,
    set_name: str | None = None,
    reset_norm: bool = True,
    norm_batches: int = 20,
    norm_seed: int = 0,
    out: str | Path | None = None,
    device: str = "auto",
    show_progress: bool | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Linear mode connectivity of a run's members: writes connectivity.json (and the figure) and returns its document.

    Args:
        config_path: the run's config.yaml.
        ckpt_path: the checkpoint to evaluate (checked against the config as ``test`` checks it); None: the
            run's own ``checkpoints/last.ckpt`` beside ``config_path``, or, for a Deep Ensemble assembled from
            ``model.member_checkpoints``, those.
        points: evenly spaced t in [0, 1], ends included (>= 2).
        set_name: "val" (the validation split, the default) or a labelled test set of the datamodule.
        reset_norm: re-estimate BatchNorm statistics on training batches at every point.
        norm_batches: how many training batches (of the datamodule's batch size) re-estimate them.
        norm_seed: seed of the order those batches are drawn in.
        out: directory for connectivity.json, figures/connectivity.png and the TensorBoard events
            (default: the checkpoint's run directory, else the directory holding ``config_path``).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        show_progress: a progress bar over the points (None: when stderr is a terminal).
        quiet: print nothing (no table, no "wrote" lines).
    """
    if not isinstance(points, int) or points < 2:
        raise ConfigError(f"--points must be an integer >= 2 (t = 0 and t = 1 included), got {points!r}")
    if not isinstance(norm_batches, int) or norm_batches < 1:
        raise ConfigError(f"--norm_batches must be an integer >= 1, got {norm_batches!r}")
    resolve_device(device)  # before the run is read: a bad --device fails first
    model, datamodule = load_run(config_path)
    name = check_set(set_name, datamodule)
    step = 0
    own = Path(config_path).parent / "checkpoints" / "last.ckpt"  # the run's final weights, beside its config.yaml
    if ckpt_path is None and not getattr(model, "member_checkpoints", None) and own.is_file():
        ckpt_path = own
        if not quiet:
            print(f"connectivity of {own} (the run's last checkpoint; --ckpt_path picks another)", file=sys.stderr)
    if ckpt_path is not None:
        checkpoint = load_checkpoint(ckpt_path, "checkpoint" if ckpt_path is own else "--ckpt_path")
        model.check_checkpoint(checkpoint, str(ckpt_path))
        model.load_state_dict(checkpoint["state_dict"])
        step = int(checkpoint.get("global_step", 0))
    elif not getattr(model, "member_checkpoints", None):
        raise ConfigError(f"connectivity needs trained weights: {own} does not exist; pass --ckpt_path <run>/checkpoints/<file>.ckpt")
    out_dir = Path(out) if out is not None else run_dir_of_checkpoint(ckpt_path) or Path(config_path).parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a directory (it is created if missing)")
    t = grid(points)
    document = _document(model, name, t, reset_norm, str(ckpt_path) if ckpt_path is not None else None)
    if (reason := _not_applicable(model)) is not None:
        document.update(applicable=False, reason=reason)
    else:
        document.update(_walk(model, datamodule, name, t, norm_batches if reset_norm else 0, norm_seed, device, show_progress))
    path = out_dir / "connectivity.json"
    kept = keep_previous(out_dir)
    atomic_write_bytes(path, (json.dumps(_json_ready(document), indent=2) + "\n").encode())
    written = [path]
    if document["applicable"]:
        figure = connectivity_figure(document)
        written.append(save_png(figure, out_dir / "figures" / "connectivity.png"))
        _write_tensorboard(out_dir, document, figure, step)
    if not quiet:
        print(format_barriers(document) if document["applicable"] else f"ensemble-lab connectivity: {document['reason']}")
        if kept is not None:
            print(f"kept the earlier walk as {kept}")
        for p in written:
            print(f"wrote {p}")
    return document


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    """Options of ``ensemble-lab connectivity``."""
    p = argparse.ArgumentParser(
        prog="ensemble-lab connectivity",
        description="Loss and error along the straight line (1 − t)·θ_i + t·θ_j between every pair of members of a "
        "trained run, and the barrier of each path; writes connectivity.json and figures/connectivity.png.",
    )
    p.add_argument("--config", required=True, help="the run's config.yaml")
    p.add_argument("--ckpt_path", default=None, help="the checkpoint to evaluate (default: <run>/checkpoints/last.ckpt beside the config)")
    p.add_argument("--points", type=int, default=11, help="evenly spaced t in [0, 1], ends included (default 11)")
    p.add_argument(
        "--set", dest="set_name", default=None, help=f"evaluation set: {VALIDATION} (the validation split, default) or a labelled test set"
    )
    p.add_argument(
        "--reset_norm", type=_bool, default=True, help="re-estimate BatchNorm statistics on training batches at every point (default true)"
    )
    p.add_argument("--norm_batches", type=int, default=20, help="training batches that re-estimate them (default 20)")
    p.add_argument("--norm_seed", type=int, default=0, help="seed of the order those batches are drawn in (default 0)")
    p.add_argument("--out", default=None, help="directory for connectivity.json and figures/ (default: the run directory)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    return p


def connectivity_main(argv: Sequence[str]) -> None:
    """``ensemble-lab connectivity --config <run>/config.yaml --ckpt_path <ckpt> [--points N] [--set NAME] ...``."""
    options = parser().parse_args(list(argv))
    run_connectivity(
        options.config, options.ckpt_path, options.points, options.set_name, options.reset_norm,
        options.norm_batches, options.norm_seed, options.out, options.device,
    )  # fmt: skip
