"""Linear mode connectivity: loss and error along the straight line between two members' weights.

For members i < j and t on a grid in [0, 1], the plain network with weights (1 − t)·θ_i + t·θ_j
(``member_networks``) is evaluated on one set: its mean NLL and its error (1 − accuracy). With
BatchNorm, the interpolated network's running statistics belong to neither member, so they are
re-estimated at every point from the same fixed training batches. Two barriers of a curve L are
reported (both never negative, since the ends count):

- ``barrier_*``, the chord barrier (Entezari et al. 2022): max_t [L(t) − ((1 − t)·L(0) + t·L(1))], how far
  the path rises above the straight chord between its ends;
- ``frankle_barrier_*`` (Frankle et al. 2020): max_t L(t) − ½(L(0) + L(1)), how far it rises above the
  mean of its ends. The two agree when L(0) = L(1); otherwise the chord barrier is the smaller.
"""

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed; Lightning's own bar library

from ensemble_lab.evaluation.member_networks import State, interpolate

#: the keys of a connectivity.json document; see docs/connectivity.md
DOCUMENT_KEYS = (
    "method", "num_members", "set", "points", "t", "reset_norm", "checkpoint", "applicable", "reason", "pairs",
    "barrier_loss_mean", "barrier_loss_std", "barrier_error_mean", "barrier_error_std",
    "frankle_barrier_loss_mean", "frankle_barrier_loss_std", "frankle_barrier_error_mean", "frankle_barrier_error_std",
)  # fmt: skip
#: per pair, and as ``<key>_mean`` / ``<key>_std`` over pairs: the chord barriers, then Frankle et al.'s
BARRIERS = ("barrier_loss", "barrier_error", "frankle_barrier_loss", "frankle_barrier_error")
#: the chord barriers after aligning member j to member i (``--align``), per pair and as ``<key>_mean`` / ``<key>_std``
ALIGNED_BARRIERS = ("aligned_barrier_loss", "aligned_barrier_error")
#: the chord barriers of the aligned path after REPAIR (``--repair``), per pair and as ``<key>_mean`` / ``<key>_std``
REPAIRED_BARRIERS = ("repaired_barrier_loss", "repaired_barrier_error")


def grid(points: int) -> list[float]:
    """``points`` evenly spaced t in [0, 1], both ends included (points >= 2)."""
    return [k / (points - 1) for k in range(points)]  # k/(N-1): 0.3, not linspace's 0.30000000000000004


def norm_layers(network: nn.Module) -> list[nn.Module]:
    """The layers with running statistics to re-estimate: those that can ``reset_running_stats`` and track them."""
    return [m for m in network.modules() if callable(getattr(m, "reset_running_stats", None)) and getattr(m, "track_running_stats", False)]


@torch.no_grad()
def reestimate_norms(network: nn.Module, batches: Sequence[Tensor]) -> None:
    """Running statistics of every norm layer recomputed from ``batches`` alone (equal weight per batch).

    Statistics are reset, then averaged cumulatively (momentum None) over forward passes in which only
    the norm layers are in training mode (dropout stays off). The network is left in eval mode.
    """
    norms = norm_layers(network)
    network.eval()
    if not norms or not batches:
        return
    momenta = [getattr(m, "momentum") for m in norms]
    for m in norms:
        m.reset_running_stats()  # type: ignore[operator]  # norm_layers checked it is callable
        setattr(m, "momentum", None)  # cumulative average: every batch counts equally
        m.train()
    for x in batches:
        network(x)
    for m, momentum in zip(norms, momenta):
        setattr(m, "momentum", momentum)
    network.eval()


@torch.no_grad()
def evaluate(network: nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> tuple[float, float]:
    """(mean NLL, error) of ``network`` (eval mode, (B, C) logits) on preprocessed ``images`` (N, ...) and ``labels`` (N,)."""
    network.eval()
    nll, wrong = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        logits = network(images[start : start + batch_size]).double()  # (b, C)
        targets = labels[start : start + batch_size]
        nll += F.cross_entropy(logits, targets, reduction="sum").cpu()
        wrong += (logits.argmax(-1) != targets).sum().cpu()
    return float(nll) / len(labels), float(wrong) / len(labels)


def barrier(curve: Sequence[float], t: Sequence[float]) -> float:
    """The chord barrier (Entezari et al. 2022), max_t [L(t) − ((1 − t)·L(0) + t·L(1))], of a curve sampled at ``t`` (t[0] = 0, t[-1] = 1)."""
    values, ts = np.asarray(curve, dtype=np.float64), np.asarray(t, dtype=np.float64)
    chord = (1 - ts) * values[0] + ts * values[-1]  # (N,)
    return float(np.max(values - chord))


def frankle_barrier(curve: Sequence[float]) -> float:
    """Frankle et al. 2020's barrier, max_t L(t) − ½(L(0) + L(1)), of a curve whose first and last values are its ends."""
    values = np.asarray(curve, dtype=np.float64)
    return float(np.max(values) - 0.5 * (values[0] + values[-1]))


def path_curves(
    plain: nn.Module,
    a: State,
    b: State,
    t: Sequence[float],
    data: tuple[Tensor, Tensor],
    batch_size: int,
    norm_batches: Sequence[Tensor] = (),
    progress: Any = None,
    at: Callable[[float], State] | None = None,
) -> tuple[list[float], list[float]]:
    """(loss curve, error curve) of ``plain`` with weights interpolate(a, b, t) at every t.

    Args:
        plain: the plain network the states belong to (its weights are overwritten).
        a: the state at t = 0 (member i).
        b: the state at t = 1 (member j).
        t: the points, in [0, 1].
        data: preprocessed images (N, ...) and labels (N,) of the evaluation set.
        batch_size: rows per forward pass.
        norm_batches: training batches to re-estimate norm statistics on at every point; none: keep the interpolated ones.
        progress: a tqdm bar to advance once per point, or None.
        at: the state at t instead of interpolate(a, b, t) (the repaired path), or None.
    """
    loss, error = [], []
    for value in t:
        plain.load_state_dict(interpolate(a, b, value) if at is None else at(value))
        reestimate_norms(plain, norm_batches)
        nll, err = evaluate(plain, *data, batch_size)
        loss.append(nll)
        error.append(err)
        if progress is not None:
            progress.update(1)
    return loss, error


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std) over pairs; std None for one pair, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def all_pairs(
    plain: nn.Module,
    states: list[State],
    t: Sequence[float],
    data: tuple[Tensor, Tensor],
    batch_size: int,
    norm_batches: Sequence[Tensor] = (),
    show_progress: bool = False,
    aligner: Callable[[State, State], State] | None = None,
    repairer: Callable[[State, State], Callable[[float], State]] | None = None,
) -> dict[str, Any]:
    """Curves and barriers of every pair i < j of members ``states``: the ``pairs`` and barrier summary of connectivity.json.

    With an ``aligner`` (member i's state, member j's state -> member j's state permuted to match i's), every pair
    is walked a second time, from member i to member j aligned: ``aligned_loss`` / ``aligned_error`` and their
    chord barriers ``aligned_barrier_loss`` / ``aligned_barrier_error``, and those barriers' mean and std over pairs.
    With a ``repairer`` too ((state a, aligned state b) -> t -> the repaired state at t), the aligned path is walked a
    third time repaired: ``repaired_loss`` / ``repaired_error`` and ``repaired_barrier_*``, else those keys are None.
    """
    pairs = [(i, j) for i in range(len(states)) for j in range(i + 1, len(states))]
    records: list[dict[str, Any]] = []
    walks = 1 if aligner is None else 2 if repairer is None else 3
    with tqdm(total=walks * len(pairs) * len(t), desc="connectivity", unit="point", disable=not show_progress, leave=False) as bar:
        for i, j in pairs:
            loss, error = path_curves(plain, states[i], states[j], t, data, batch_size, norm_batches, bar)
            records.append(
                {"i": i, "j": j, "loss": loss, "error": error, "barrier_loss": barrier(loss, t), "barrier_error": barrier(error, t),
                 "frankle_barrier_loss": frankle_barrier(loss), "frankle_barrier_error": frankle_barrier(error)}  # fmt: skip
            )
            records[-1].update({key: None for key in ("repaired_loss", "repaired_error") + REPAIRED_BARRIERS})  # null without --repair
            if aligner is not None:
                matched = aligner(states[i], states[j])
                loss, error = path_curves(plain, states[i], matched, t, data, batch_size, norm_batches, bar)
                records[-1].update(aligned_loss=loss, aligned_error=error, aligned_barrier_loss=barrier(loss, t),
                                   aligned_barrier_error=barrier(error, t))  # fmt: skip
            if aligner is not None and repairer is not None:
                loss, error = path_curves(plain, states[i], matched, t, data, batch_size, norm_batches, bar, repairer(states[i], matched))
                records[-1].update(repaired_loss=loss, repaired_error=error, repaired_barrier_loss=barrier(loss, t),
                                   repaired_barrier_error=barrier(error, t))  # fmt: skip
    summary: dict[str, Any] = {"pairs": records}
    for key in BARRIERS + (ALIGNED_BARRIERS if aligner is not None else ()) + (REPAIRED_BARRIERS if aligner and repairer else ()):
        summary[f"{key}_mean"], summary[f"{key}_std"] = _mean_std([r[key] for r in records])
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def format_barriers(document: dict[str, Any]) -> str:
    """The printed table: one row per pair (chord and Frankle loss / error barriers), then the mean ± std over pairs."""
    aligned = any("aligned_barrier_loss" in r for r in document["pairs"])
    repaired = any(r.get("repaired_barrier_loss") is not None for r in document["pairs"])
    keys = BARRIERS + (ALIGNED_BARRIERS if aligned else ()) + (REPAIRED_BARRIERS if repaired else ())
    headers = ("loss barrier", "error barrier", "Frankle loss", "Frankle error") + (("aligned loss", "aligned error") if aligned else ())
    headers += ("repaired loss", "repaired error") if repaired else ()
    lines = [f"{'pair':<8}" + "".join(f" {h:>18}" for h in headers)]
    lines += [f"{str(r['i']) + '-' + str(r['j']):<8}" + "".join(f" {_fmt(r.get(k)):>18}" for k in keys) for r in document["pairs"]]
    means = [f"{_fmt(document.get(f'{k}_mean'))} ± {_fmt(document.get(f'{k}_std'))}" for k in keys]
    lines.append(f"{'mean':<8}" + "".join(f" {m:>18}" for m in means))
    lines.append("barrier: above the chord (1 − t)·L(0) + t·L(1); Frankle: above ½(L(0) + L(1))"
                 + ("; aligned: the chord barrier after weight matching member j to member i" if aligned else "")
                 + ("; repaired: aligned, then REPAIR" if repaired else ""))  # fmt: skip
    return "\n".join(lines)


def connectivity_figure(document: dict[str, Any]) -> Figure:
    """Loss and error against t for every pair (thin lines), their mean (black) and mean ± std band."""
    t = np.asarray(document["t"])
    aligned_any = any("aligned_loss" in r for r in document["pairs"])
    repaired_any = any(r.get("repaired_loss") is not None for r in document["pairs"])
    fig = Figure(figsize=(10.5, 4.6 if repaired_any else 4.2 if aligned_any else 3.8), dpi=80)  # room for a line per barrier under each title
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("loss", "error"), ("NLL", "error (1 − accuracy)")):
        curves = np.asarray([r[key] for r in document["pairs"]], dtype=np.float64)  # (P, N)
        aligned = np.asarray([r[f"aligned_{key}"] for r in document["pairs"] if f"aligned_{key}" in r], dtype=np.float64)  # (P, N) or empty
        repaired = np.asarray([r[f"repaired_{key}"] for r in document["pairs"] if r.get(f"repaired_{key}") is not None], dtype=np.float64)  # (P, N) or empty
        labelled = len(curves) <= 10
        for p, (r, curve) in enumerate(zip(document["pairs"], curves)):
            (line,) = ax.plot(t, curve, linewidth=1, alpha=0.6, label=f"{r['i']}–{r['j']}" if labelled else None)
            if len(aligned):  # the same pair after alignment: its colour, dashed
                ax.plot(t, aligned[p], linewidth=1, alpha=0.8, linestyle="--", color=line.get_color())
            if len(repaired):  # aligned and repaired: its colour, dotted
                ax.plot(t, repaired[p], linewidth=1.5, alpha=0.9, linestyle=":", color=line.get_color())
        mean = curves.mean(0)  # (N,)
        if len(curves) > 1:
            std = curves.std(0, ddof=1)  # (N,)
            ax.fill_between(t, mean - std, mean + std, color="grey", alpha=0.25, label="mean ± std")
        ax.plot(t, mean, color="black", linewidth=2, label="mean")
        chord, frankle = document[f"barrier_{key}_mean"], document.get(f"frankle_barrier_{key}_mean")
        title = f"{key}: mean barrier {_fmt(chord)} (Frankle {_fmt(frankle)})"
        if len(aligned):
            ax.plot(t, aligned.mean(0), color="black", linewidth=2, linestyle="--", label="mean after alignment\n(dashed: each pair aligned)")
            title += f"\naligned (weight matching): {_fmt(document.get(f'aligned_barrier_{key}_mean'))}"
        if len(repaired):
            ax.plot(t, repaired.mean(0), color="black", linewidth=2, linestyle=":", label="mean after REPAIR\n(dotted: each pair repaired)")
            title += f"\nrepaired (REPAIR): {_fmt(document.get(f'repaired_barrier_{key}_mean'))}"
        ax.set(xlabel="t  (0: member i, 1: member j)", ylabel=label, xlim=(0, 1), title=title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small", title="pair i–j", title_fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    where = "the validation split" if document["set"] == "val" else f"test set {document['set']}"
    fig.suptitle(f"{document['method']}, M = {document['num_members']}: weights (1 − t)·θ_i + t·θ_j, on {where}"
                 f"{'' if document['reset_norm'] else ' (norm statistics interpolated, not re-estimated)'}")  # fmt: skip
    fig.tight_layout()
    return fig
