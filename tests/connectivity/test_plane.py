"""Loss planes: the basis against numpy, the members' own points against the ensemble's logits, bad --plane options."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ensemble_lab.connectivity.plane import (
    check_grid,
    evaluate_plane,
    flat,
    member_coordinates,
    parse_plane,
    plane_basis,
    plane_figure,
    plane_state,
)
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import member_states
from ensemble_lab.methods import DeepEnsemble


def test_the_basis_is_orthonormal_and_spans_the_three_points():
    g = torch.Generator().manual_seed(0)
    wi, wj, wk = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    u, v = plane_basis(wi, wj, wk)
    gram = torch.stack([u, v]) @ torch.stack([u, v]).T  # (2, 2)
    np.testing.assert_allclose(gram.numpy(), np.eye(2), atol=1e-12)
    # the same plane as numpy's QR of (w_j − w_i, w_k − w_i): equal projections
    q, _ = np.linalg.qr(np.stack([(wj - wi).numpy(), (wk - wi).numpy()], axis=1))  # (50, 2)
    ours = np.stack([u.numpy(), v.numpy()], axis=1)
    np.testing.assert_allclose(ours @ ours.T, q @ q.T, atol=1e-12)
    (xi, yi), (xj, yj), (xk, yk) = member_coordinates(wi, wj, wk, u, v)
    assert (xi, yi) == (0.0, 0.0) and yj == pytest.approx(0.0, abs=1e-12) and xj == pytest.approx(float((wj - wi).norm()))
    np.testing.assert_allclose((wi + xk * u + yk * v).numpy(), wk.numpy(), atol=1e-12)  # member k lies on the plane


def test_members_on_one_line_span_no_plane():
    wi, wj = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    with pytest.raises(ConfigError, match="lie on one line"):
        plane_basis(wi, wj, 3 * wj)
    with pytest.raises(ConfigError, match="same weights"):
        plane_basis(wi, wi, wj)


def test_plane_states_at_the_corners_are_the_members_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    states = [{"w": torch.randn(7, generator=g), "n": torch.tensor(3)} for _ in range(3)]
    for (alpha, beta), member in zip(((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)), states):
        point = plane_state(states, alpha, beta)
        assert torch.equal(point["w"], member["w"]) and point["w"].dtype == torch.float32
    mid = plane_state(states, 0.25, 0.5)["w"].double()
    a, b, c = (s["w"].double() for s in states)
    torch.testing.assert_close(mid, a + 0.25 * (b - a) + 0.5 * (c - a), rtol=0, atol=1e-6)


def test_the_members_points_reproduce_their_own_losses():
    torch.manual_seed(2)
    model = DeepEnsemble(num_members=3, backbone="mlp", hidden_sizes=[10]).eval()
    plain = model.member_network()
    states = member_states(model.network, plain, 3, "DeepEnsemble")
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    plane = evaluate_plane(plain, states, 4, (x, y), batch_size=16)
    with torch.no_grad():
        logits = model(x).double()  # (M, N, C): the ensemble's own forward
    for member, point in enumerate(plane["points"]):
        assert point["loss"] == pytest.approx(float(F.cross_entropy(logits[member], y)), rel=1e-6)
        assert point["error"] == float((logits[member].argmax(-1) != y).double().mean())
    # the grid covers the three members with a margin on every side, row r of the values at y[r]
    xs, ys = np.asarray(plane["x"]), np.asarray(plane["y"])
    assert len(xs) == len(ys) == 4 and np.asarray(plane["loss"]).shape == (4, 4)
    assert xs[0] < min(p["x"] for p in plane["points"]) and xs[-1] > max(p["x"] for p in plane["points"])
    assert ys[0] < min(p["y"] for p in plane["points"]) and ys[-1] > max(p["y"] for p in plane["points"])
    wi, wj, wk = (flat(s, [n for n, _ in plain.named_parameters()]) for s in states)
    assert plane["points"][1]["x"] == pytest.approx(float((wj - wi).norm())) and plane["points"][1]["y"] == pytest.approx(0.0, abs=1e-9)
    # a grid point is the network w_i + x·u + y·v: evaluate one corner by hand
    u, v = plane_basis(wi, wj, wk)
    corner = wi + xs[0] * u + ys[0] * v
    torch.nn.utils.vector_to_parameters(corner.float(), plain.parameters())
    with torch.no_grad():
        assert plane["loss"][0][0] == pytest.approx(float(F.cross_entropy(plain(x).double(), y)), rel=1e-5)
    figure = plane_figure({"method": "DeepEnsemble", "set": "val", "plane": {"members": [0, 1, 2], **plane}})
    assert [ax.get_title() for ax in figure.axes[:2]] == ["NLL", "error (1 − accuracy)"]


@pytest.mark.parametrize(
    "text, says",
    [("0,1", "give three member indices"), ("0,1,2,3", "give three member indices"), ("a,b,c", "give three member indices"),
     ("0,1,3", "numbered 0 to 2"), ("0,-1,2", "numbered 0 to 2"), ("0,1,1", "must differ")],  # fmt: skip
)
def test_a_bad_plane_is_one_line(text, says):
    with pytest.raises(ConfigError) as info:
        parse_plane(text, 3)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_good_plane_and_grid():
    assert parse_plane(" 2, 0,1", 3) == (2, 0, 1)
    check_grid(2)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ConfigError, match="--grid must be an integer >= 2"):
            check_grid(bad)  # type: ignore[arg-type]
