"""``ensemble-lab connectivity``: linear mode connectivity between the members of a trained run.

Loads the run the way ``test`` does (its config.yaml and a checkpoint checked against it), walks
the straight line between every pair of members in weight space (optionally a second time with each
member's units aligned to the other's, ``alignment``), optionally evaluates the plane through three
members (``plane``) and writes connectivity.json, the figures (PNG and TensorBoard) and a table of
barriers; see docs/connectivity.md.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ensemble_lab.connectivity.alignment import ALIGNMENTS, align, check_alignable
from ensemble_lab.connectivity.barriers import (
    ALIGNED_BARRIERS,
    BARRIERS,
    REPAIRED_BARRIERS,
    all_pairs,
    connectivity_figure,
    format_barriers,
    grid,
    norm_layers,
)
from ensemble_lab.connectivity.loading import VALIDATION, check_set, load_run, load_weights, resolve_device, set_data, training_batches
from ensemble_lab.connectivity.permutations import PermutationSpec
from ensemble_lab.connectivity.plane import check_grid, evaluate_plane, parse_plane, plane_figure, plane_summary
from ensemble_lab.connectivity.repair import repairable_layers, repairer
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import State, has_member_layers, member_states
from ensemble_lab.figures.per_run import save_png
from ensemble_lab.io import atomic_write_bytes, first_free_number
from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.runs.layout import run_dir_of_checkpoint
from ensemble_lab.runs.results import _json_ready

__all__ = ["check_set", "connectivity_main", "load_run", "parser", "run_connectivity", "training_batches"]
#: the figures beside connectivity.json, under figures/: the pairwise curves and the plane
FIGURES = ("connectivity.png", "connectivity_plane.png")


def _document(model: EnsembleModule, set_name: str, t: list[float], reset_norm: bool, checkpoint: str | None, align: str,
              repair: bool) -> dict[str, Any]:
    return {"method": type(model).__name__, "num_members": int(model.num_members), "set": set_name, "points": len(t), "t": t,
            "reset_norm": reset_norm, "checkpoint": checkpoint, "applicable": True, "reason": None, "align": align, "repair": repair,
            "repaired_layers": None, "repair_batches": 0, "pairs": [],
            **{f"{key}_{stat}": None for key in BARRIERS + ALIGNED_BARRIERS + REPAIRED_BARRIERS for stat in ("mean", "std")},
            "norm_batches": 0, "plane": None}  # fmt: skip


def _not_applicable(model: EnsembleModule) -> str | None:
    """Why the run has no path between members to walk, or None."""
    method = type(model).__name__
    if model.num_members < 2:
        return f"{method} has {model.num_members} member: there is no pair of members to connect"
    if not has_member_layers(model.network):
        return f"{method}'s members share every weight (one network): there is no path between members to walk"
    return None


def _write_tensorboard(log_dir: Path, document: dict[str, Any], figures: dict[str, Figure], step: int) -> None:
    """``figures`` (tag suffix -> figure) and the mean barriers into the TensorBoard events of ``log_dir`` (skipped without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # an optional dependency
    except ImportError:  # TensorBoard is optional for Lightning; the PNG and the JSON are written regardless
        return
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for suffix, figure in figures.items():
            writer.add_figure(f"connectivity/{document['set']}{suffix}", figure, global_step=step, close=False)
        for key in (f"{barrier}_mean" for barrier in BARRIERS + ALIGNED_BARRIERS + REPAIRED_BARRIERS):
            if document[key] is not None:
                writer.add_scalar(f"connectivity/{document['set']}/{key}", document[key], global_step=step)


def _measure(
    model: EnsembleModule,
    datamodule: EnsembleDataModule,
    set_name: str,
    t: list[float],
    norm_batches: int,
    norm_seed: int,
    device: str,
    show_progress: bool | None,
    spec: PermutationSpec | None,
    plane: tuple[int, int, int] | None,
    plane_grid: int,
    repair: bool = False,
    repair_batches: int = 20,
) -> dict[str, Any]:
    """The curves and barriers of every pair of members, aligned too with a ``spec`` (and repaired with ``repair``, its
    statistics on ``repair_batches`` training batches), and the plane through the members ``plane`` (``norm_batches`` 0:
    statistics interpolated, not re-estimated)."""
    run_on = resolve_device(device)
    plain = model.member_network().to(run_on)
    states = member_states(model.network, plain, model.num_members, type(model).__name__)
    states = [{k: v.to(run_on) for k, v in state.items()} for state in states]
    data = set_data(datamodule, set_name)
    evaluated = (datamodule.preprocess(data.images.to(run_on), train=False), data.labels.to(run_on))
    batches = [b.to(run_on) for b in training_batches(datamodule, norm_batches, norm_seed)] if norm_batches and norm_layers(plain) else []
    progress = show_progress if show_progress is not None else sys.stderr.isatty()
    aligned = None if spec is None else (lambda a, b: align(plain, spec, a, b)[0])
    size = datamodule.eval_batch_size
    fixer, layers, repair_on = None, None, []
    if repair and spec is not None:  # the same seeded training batches the norms are re-estimated on
        layers = repairable_layers(plain, spec)
        repair_on = [b.to(run_on) for b in training_batches(datamodule, repair_batches, norm_seed)]
        fixer = repairer(plain, layers, repair_on)
    measured = {"norm_batches": len(batches), "repaired_layers": layers, "repair_batches": len(repair_on),
                **all_pairs(plain, states, t, evaluated, size, batches, progress, aligned, fixer)}  # fmt: skip
    if plane is not None:
        i, j, k = plane
        chosen: list[State] = [states[i], *(states[m] if aligned is None else aligned(states[i], states[m]) for m in (j, k))]
        values = evaluate_plane(plain, chosen, plane_grid, evaluated, size, batches, progress)
        measured["plane"] = {"members": [i, j, k], "aligned": aligned is not None, **values}
    return measured


def keep_previous(out_dir: Path) -> Path | None:
    """An earlier connectivity.json and its figures in ``out_dir`` renamed to connectivity.prev-N.* (N = 1, 2, ...), so a
    second walk (other points, another set) never replaces the first; returns the kept json, or None."""
    old = out_dir / "connectivity.json"
    if not old.exists():
        return None
    n = first_free_number(lambda k: (out_dir / f"connectivity.prev-{k}.json").exists())
    for name in FIGURES:
        if (figure := out_dir / "figures" / name).exists():
            os.replace(figure, figure.with_name(name.replace("connectivity", f"connectivity.prev-{n}", 1)))
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
    align: str = "none",
    plane: str | None = None,
    plane_grid: int | None = None,
    repair: bool = False,
) -> dict[str, Any]:
    """Linear mode connectivity of a run's members: writes connectivity.json (and the figures) and returns its document.

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
        out: directory for connectivity.json, figures/ and the TensorBoard events
            (default: the checkpoint's run directory, else the directory holding ``config_path``).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        show_progress: a progress bar over the points (None: when stderr is a terminal).
        quiet: print nothing (no table, no "wrote" lines).
        align: "none", or "weight_matching": walk every pair a second time with member j's units permuted to
            match member i's (Ainsworth et al. 2023); the plane's members j and k are aligned to i too.
        plane: "i,j,k": also evaluate the plane through members i, j and k (Garipov et al. 2018); None: no plane.
        plane_grid: points along each side of the plane (>= 2; default 11); only with ``plane``.
        repair: also walk the aligned path with REPAIR (Jordan et al. 2023): at every point the hidden units of each
            layer not followed by a BatchNorm get the interpolated mean and std of the two members' units, measured
            on ``norm_batches`` training batches; only with ``align`` "weight_matching".
    """
    if not isinstance(points, int) or points < 2:
        raise ConfigError(f"--points must be an integer >= 2 (t = 0 and t = 1 included), got {points!r}")
    if not isinstance(norm_batches, int) or norm_batches < 1:
        raise ConfigError(f"--norm_batches must be an integer >= 1, got {norm_batches!r}")
    if align not in ALIGNMENTS:
        raise ConfigError(f"--align {align!r} is not known; choose one of: {', '.join(ALIGNMENTS)}")
    if repair and align != "weight_matching":
        raise ConfigError("--repair true repairs the aligned path: add --align weight_matching")
    if plane is None and plane_grid is not None:
        raise ConfigError("--grid sets the plane's resolution: give it with --plane i,j,k")
    check_grid(plane_grid := 11 if plane_grid is None else plane_grid)
    resolve_device(device)  # before the run is read: a bad --device fails first
    model, datamodule = load_run(config_path)
    if not model.task.has_classes:  # its barriers are of cross-entropy and error rate
        raise ConfigError(f"connectivity measures cross-entropy and error barriers: classification runs only; {config_path} is a {model.task.name} run")
    name = check_set(set_name, datamodule)
    members = parse_plane(plane, model.num_members) if plane is not None else None
    ckpt_path, step = load_weights(model, config_path, ckpt_path, quiet)
    out_dir = Path(out) if out is not None else run_dir_of_checkpoint(ckpt_path) or Path(config_path).parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a directory (it is created if missing)")
    t = grid(points)
    document = _document(model, name, t, reset_norm, str(ckpt_path) if ckpt_path is not None else None, align, repair)
    if (reason := _not_applicable(model)) is not None:
        document.update(applicable=False, reason=reason)
    else:
        method = type(model).__name__
        spec = check_alignable(model.network, model.member_network(), method) if align != "none" else None  # before any work
        measured = _measure(model, datamodule, name, t, norm_batches if reset_norm else 0, norm_seed, device, show_progress,
                            spec, members, plane_grid, repair, norm_batches)  # fmt: skip
        document.update(measured)
    path = out_dir / "connectivity.json"
    kept = keep_previous(out_dir)
    atomic_write_bytes(path, (json.dumps(_json_ready(document), indent=2) + "\n").encode())
    written = [path]
    if document["applicable"]:
        figures = {"": connectivity_figure(document)}
        if document["plane"] is not None:
            figures["/plane"] = plane_figure(document)
        for figure, file in zip(figures.values(), FIGURES):
            written.append(save_png(figure, out_dir / "figures" / file))
        _write_tensorboard(out_dir, document, figures, step)
    if not quiet:
        print(format_barriers(document) if document["applicable"] else f"ensemble-lab connectivity: {document['reason']}")
        if document["plane"] is not None:
            print(plane_summary(document["plane"]))
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
    p.add_argument(
        "--align", default="none", metavar="{none,weight_matching}",
        help="weight_matching: walk every pair a second time after permuting member j's hidden units to match member i's "
        "(Ainsworth et al. 2023), and report the aligned barriers beside the raw ones (default none); "
        "for members that own all their weights: Deep Ensembles and Packed-Ensembles with gamma 1",
    )  # fmt: skip
    p.add_argument(
        "--plane", default=None, metavar="I,J,K",
        help="also evaluate loss and error on the plane through members I, J and K (Garipov et al. 2018), "
        "drawn as figures/connectivity_plane.png; with --align, J and K are aligned to I first",
    )  # fmt: skip
    p.add_argument(
        "--repair", type=_bool, default=False,
        help="with --align weight_matching: walk every aligned pair a third time with REPAIR (Jordan et al. 2023), giving each "
        "hidden unit not followed by a BatchNorm the interpolated mean and std of the members' units (default false)",
    )  # fmt: skip
    p.add_argument("--grid", dest="plane_grid", type=int, default=None, metavar="N", help="points along each side of the plane (default 11; with --plane)")
    return p


def connectivity_main(argv: Sequence[str]) -> None:
    """``ensemble-lab connectivity --config <run>/config.yaml --ckpt_path <ckpt> [--points N] [--set NAME] ...``."""
    options = parser().parse_args(list(argv))
    run_connectivity(
        options.config, options.ckpt_path, options.points, options.set_name, options.reset_norm,
        options.norm_batches, options.norm_seed, options.out, options.device,
        align=options.align, plane=options.plane, plane_grid=options.plane_grid, repair=options.repair,
    )  # fmt: skip
