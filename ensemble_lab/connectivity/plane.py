"""Loss planes (Garipov et al. 2018): loss and error on the plane through three members' weights.

The parameters of members i, j and k, each flattened into one vector w (every parameter of the member
network), span a plane. Its orthonormal basis comes from Gram–Schmidt on (w_j − w_i, w_k − w_i):

    u = (w_j − w_i) / ‖w_j − w_i‖,    v = r / ‖r‖  with  r = (w_k − w_i) − ⟨w_k − w_i, u⟩·u

so the point (x, y) is w_i + x·u + y·v, member i sits at (0, 0), member j at (‖w_j − w_i‖, 0) and member k at
(⟨w_k − w_i, u⟩, ⟨w_k − w_i, v⟩): distances on the plot are distances in weight space. The same point is
the affine combination w_i + α·(w_j − w_i) + β·(w_k − w_i), which is how a point's full state is built (in
float64, so α, β ∈ {0, 1} give the members' own tensors bit for bit); running statistics follow the same
combination unless they are re-estimated there, as the pairwise walk does.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed; Lightning's own bar library

from ensemble_lab.connectivity.barriers import evaluate, reestimate_norms
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import State

#: how far the grid reaches beyond the three members, as a fraction of their spread along each axis
MARGIN = 0.25


def parse_plane(text: str, num_members: int) -> tuple[int, int, int]:
    """``--plane i,j,k`` as three distinct member indices in [0, num_members); a ConfigError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConfigError(f"--plane {text!r}: give three member indices separated by commas, e.g. --plane 0,1,2")
    i, j, k = (int(p) for p in parts)
    if not all(0 <= m < num_members for m in (i, j, k)):
        raise ConfigError(f"--plane {text}: members are numbered 0 to {num_members - 1} in this run of {num_members} members")
    if len({i, j, k}) != 3:
        raise ConfigError(f"--plane {text}: the three members must differ (two equal members span no plane)")
    return i, j, k


def check_grid(grid: int) -> None:
    """A ConfigError unless ``--grid`` is an integer >= 2."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ConfigError(f"--grid must be an integer >= 2 (points along each side of the plane), got {grid!r}")


def flat(state: State, keys: Sequence[str]) -> Tensor:
    """The tensors ``keys`` of ``state`` flattened and concatenated, in float64 (P,)."""
    return torch.cat([state[k].detach().to(torch.float64).flatten() for k in keys])


def plane_basis(wi: Tensor, wj: Tensor, wk: Tensor) -> tuple[Tensor, Tensor]:
    """The orthonormal basis (u, v) of the plane through the points ``wi``, ``wj``, ``wk`` (P,), by Gram–Schmidt;
    a ConfigError when they lie on one line."""
    dj, dk = wj - wi, wk - wi
    if float(dj.norm()) == 0.0:
        raise ConfigError("--plane: the first two members have the same weights; they span no plane")
    u = dj / dj.norm()
    r = dk - (dk @ u) * u
    if float(r.norm()) <= 1e-9 * float(dk.norm()):
        raise ConfigError("--plane: the three members lie on one line in weight space; they span no plane")
    return u, r / r.norm()


def member_coordinates(wi: Tensor, wj: Tensor, wk: Tensor, u: Tensor, v: Tensor) -> list[tuple[float, float]]:
    """(x, y) of the three members in the basis (u, v) with w_i at the origin."""
    return [(float((w - wi) @ u), float((w - wi) @ v)) for w in (wi, wj, wk)]


def axis_values(low: float, high: float, grid: int, margin: float = MARGIN) -> list[float]:
    """``grid`` evenly spaced values covering [low, high] with ``margin`` of its width added on each side."""
    pad = margin * (high - low)
    return np.linspace(low - pad, high + pad, grid).tolist()


def plane_state(states: Sequence[State], alpha: float, beta: float) -> State:
    """a + α·(b − a) + β·(c − a) of the three ``states`` for floating tensors (computed in float64, cast back);
    integer buffers from a."""
    a, b, c = states
    point = {}
    for key, value in a.items():
        if value.is_floating_point():
            a64 = value.double()
            point[key] = (a64 + alpha * (b[key].double() - a64) + beta * (c[key].double() - a64)).to(value.dtype)
        else:
            point[key] = value
    return point


def evaluate_plane(
    plain: nn.Module,
    states: Sequence[State],
    grid: int,
    data: tuple[Tensor, Tensor],
    batch_size: int,
    norm_batches: Sequence[Tensor] = (),
    show_progress: bool = False,
) -> dict[str, Any]:
    """Loss and error of ``plain`` on a ``grid`` × ``grid`` lattice of the plane through the three ``states``,
    and at the members' own points: the ``plane`` entry of connectivity.json (without the member indices).

    Args:
        plain: the plain network the states belong to (its weights are overwritten).
        states: the states of members i, j and k.
        grid: points along each side.
        data: preprocessed images (N, ...) and labels (N,) of the evaluation set.
        batch_size: rows per forward pass.
        norm_batches: training batches to re-estimate norm statistics on at every point; none: keep the combined ones.
        show_progress: a progress bar over the points.
    """
    keys = [name for name, _ in plain.named_parameters()]
    wi, wj, wk = (flat(s, keys) for s in states)
    u, v = plane_basis(wi, wj, wk)
    members = member_coordinates(wi, wj, wk, u, v)
    (_, _), (xj, _), (xk, yk) = members
    xs = axis_values(min(p[0] for p in members), max(p[0] for p in members), grid)
    ys = axis_values(min(p[1] for p in members), max(p[1] for p in members), grid)

    def at(x: float, y: float) -> tuple[float, float]:
        beta = y / yk  # (x, y) = α·(xj, 0) + β·(xk, yk)
        plain.load_state_dict(plane_state(states, (x - beta * xk) / xj, beta))
        reestimate_norms(plain, norm_batches)
        return evaluate(plain, *data, batch_size)

    loss, error = np.zeros((grid, grid)), np.zeros((grid, grid))  # (y, x): row r is ys[r]
    with tqdm(total=grid * grid + 3, desc="plane", unit="point", disable=not show_progress, leave=False) as bar:
        for r, y in enumerate(ys):
            for c, x in enumerate(xs):
                loss[r, c], error[r, c] = at(x, y)
                bar.update(1)
        points = []
        for (x, y), (alpha, beta) in zip(members, ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))):
            plain.load_state_dict(plane_state(states, alpha, beta))  # exactly the member, not its rounded coordinates
            reestimate_norms(plain, norm_batches)
            nll, err = evaluate(plain, *data, batch_size)
            points.append({"x": x, "y": y, "loss": nll, "error": err})
            bar.update(1)
    return {"grid": grid, "margin": MARGIN, "x": xs, "y": ys, "loss": loss.tolist(), "error": error.tolist(), "points": points}


def plane_figure(document: dict[str, Any]) -> Figure:
    """Filled contours of loss and error on the plane, the three members marked and labelled."""
    plane = document["plane"]
    xs, ys = np.asarray(plane["x"]), np.asarray(plane["y"])
    fig = Figure(figsize=(11, 4.6), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("loss", "error"), ("NLL", "error (1 − accuracy)")):
        values = np.asarray(plane[key], dtype=np.float64)  # (y, x)
        low, high = float(values.min()), float(values.max())
        if key == "loss" and low > 0 and high / low > 20:  # a wide range: geometric levels keep the basin's detail
            levels = np.geomspace(low, high, 16)
        else:
            levels = np.linspace(low, high if high > low else low + 1e-6, 16)
        filled = ax.contourf(xs, ys, values, levels=levels, cmap="viridis")
        ax.contour(xs, ys, values, levels=levels, colors="white", linewidths=0.4, alpha=0.5)
        fig.colorbar(filled, ax=ax, label=label, format="%.3g")
        middle = (xs[0] + xs[-1]) / 2
        for member, point in zip(plane["members"], plane["points"]):
            ax.plot(point["x"], point["y"], marker="o", markersize=8, color="white", markeredgecolor="black")
            right = point["x"] > middle  # label towards the centre, so it stays inside the axes
            ax.annotate(f"member {member}\n{key} {point[key]:.3f}", (point["x"], point["y"]), xytext=(-7 if right else 7, 7),
                        textcoords="offset points", ha="right" if right else "left", color="white", fontsize="small",
                        fontweight="bold")  # fmt: skip
        ax.set(xlabel="u: along w_j − w_i (weight-space distance)", ylabel="v: orthogonal to u, towards w_k", title=label)
    where = "the validation split" if document["set"] == "val" else f"test set {document['set']}"
    aligned = ", members aligned to the first by weight matching" if plane.get("aligned") else ""
    i, j, k = plane["members"]
    fig.suptitle(f"{document['method']}: the plane through members {i}, {j}, {k}{aligned}, on {where}")
    fig.tight_layout()
    return fig


def plane_summary(plane: dict[str, Any]) -> str:
    """One printed line per member: its plane coordinates and its loss and error there, then the plane's minimum."""
    lines = [f"plane through members {', '.join(map(str, plane['members']))} ({plane['grid']} x {plane['grid']} points)"]
    for member, p in zip(plane["members"], plane["points"]):
        lines.append(f"  member {member}: (x, y) = ({p['x']:.3f}, {p['y']:.3f})  loss {p['loss']:.4f}  error {p['error']:.4f}")
    lowest = float(np.min(plane["loss"]))
    lines.append(f"  lowest loss on the grid {lowest:.4f}" if math.isfinite(lowest) else "  no finite loss on the grid")
    return "\n".join(lines)
