"""Tests of ensemble_lab.metrics.classification against hand-worked numbers and independent references.

References: numbers worked out by hand (derivations in comments), scikit-learn for AUROC / AUPR /
FPR95, scipy for entropies and the Jensen-Shannon divergence, and plain Python loops for ECE and
disagreement.
"""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.metrics.classification import (
    NLL_EPS,
    entropy,
    expected_calibration_error,
    pairwise_disagreement,
    pairwise_jsd,
    predictive_metrics,
    reliability_bins,
    uncertainty_scores,
)
from ensemble_lab.metrics.ood import ood_detection, ood_metrics

PREDICTIVE_KEYS = {
    "acc", "nll", "brier", "ece", "entropy", "expected_entropy", "mi", "disagreement",
    "member_acc", "member_nll", "member_ece", "pairwise_disagreement", "pairwise_jsd",
}  # fmt: skip


def random_member_probs(
    num_members: int, num_samples: int, num_classes: int, seed: int, zeros: bool = False
) -> torch.Tensor:
    """Softmax of random logits (M, N, C), float64; ``zeros`` sets ~30% of entries to exact 0."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(num_members, num_samples, num_classes, generator=gen, dtype=torch.float64)
    probs = logits.softmax(-1)
    if zeros:
        keep = torch.rand(probs.shape, generator=gen) > 0.3
        keep[..., 0] = True  # every row keeps at least one class
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


# --------------------------------------------------------------------------------------------
# Hand-worked case: 2 members, 3 samples, 2 classes.
#   member 0: [1.0, 0.0]  [0.9, 0.1]  [0.4, 0.6]
#   member 1: [1.0, 0.0]  [0.3, 0.7]  [0.4, 0.6]
#   p̄:       [1.0, 0.0]  [0.6, 0.4]  [0.4, 0.6]      targets: 0, 1, 0
# Entropies used below: H(.6,.4) = 0.6730116670, H(.9,.1) = 0.3250829734, H(.3,.7) = 0.6108643021.
# --------------------------------------------------------------------------------------------
HAND_PROBS = [
    [[1.0, 0.0], [0.9, 0.1], [0.4, 0.6]],
    [[1.0, 0.0], [0.3, 0.7], [0.4, 0.6]],
]
HAND_TARGETS = [0, 1, 0]


def hand_case(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(HAND_PROBS, dtype=dtype), torch.tensor(HAND_TARGETS)


def test_predictive_metrics_hand_worked() -> None:
    probs, targets = hand_case()
    out = predictive_metrics(probs, targets)
    assert set(out) == PREDICTIVE_KEYS
    # argmax p̄ = 0, 0, 1 vs targets 0, 1, 0: only sample 0 right.
    assert out["acc"] == pytest.approx(1 / 3)
    # -(ln 1 + ln 0.4 + ln 0.4)/3 = 2 · 0.9162907319 / 3
    assert out["nll"] == pytest.approx(0.6108604879161034, abs=1e-12)
    # sample 0: 0; sample 1: 0.6² + 0.6² = 0.72; sample 2: 0.6² + 0.6² = 0.72 -> 1.44/3
    assert out["brier"] == pytest.approx(0.48, abs=1e-12)
    # conf 1.0 (right) in bin 14; conf 0.6, 0.6 (both wrong) in bin 8: 2/3 · |0 − 0.6|
    assert out["ece"] == pytest.approx(0.4, abs=1e-12)
    # (0 + 0.6730116670 + 0.6730116670)/3
    assert out["entropy"] == pytest.approx(0.4486744446728377, abs=1e-12)
    # per sample: 0, (0.3250829734 + 0.6108643021)/2 = 0.4679736377, 0.6730116670 -> mean
    assert out["expected_entropy"] == pytest.approx(0.38032843491080914, abs=1e-12)
    # per sample: 0, 0.6730116670 − 0.4679736377 = 0.2050380293, 0 -> mean
    assert out["mi"] == pytest.approx(0.06834600976202855, abs=1e-12)
    # the members' argmax differ on sample 1 only
    assert out["disagreement"] == pytest.approx(1 / 3)
    # member 0 predicts 0, 0, 1 (1 right); member 1 predicts 0, 1, 1 (2 right)
    assert out["member_acc"] == pytest.approx([1 / 3, 2 / 3])
    # member 0: -(ln 1 + ln 0.1 + ln 0.4)/3; member 1: -(ln 1 + ln 0.7 + ln 0.4)/3
    assert out["member_nll"] == pytest.approx([1.0729586082894003, 0.4243218919376292], abs=1e-12)
    # member 0: conf 1 (right), 0.9 (wrong), 0.6 (wrong) in separate bins: (0 + 0.9 + 0.6)/3
    # member 1: conf 1 (right), 0.7 (right), 0.6 (wrong) in separate bins: (0 + 0.3 + 0.6)/3
    assert out["member_ece"] == pytest.approx([0.5, 0.3], abs=1e-12)
    assert np.allclose(out["pairwise_disagreement"], [[0.0, 1 / 3], [1 / 3, 0.0]], atol=1e-12)
    # with two members the pairwise JSD equals the ensemble's mi
    jsd = 0.06834600976202855
    assert np.allclose(out["pairwise_jsd"], [[0.0, jsd], [jsd, 0.0]], atol=1e-12)


def test_uncertainty_scores_hand_worked() -> None:
    probs, _ = hand_case()
    scores = uncertainty_scores(probs)
    assert set(scores) == {"msp", "entropy", "mi"}
    # 1 − max p̄ = 1 − (1.0, 0.6, 0.6)
    assert scores["msp"].tolist() == pytest.approx([0.0, 0.4, 0.4], abs=1e-12)
    assert scores["entropy"].tolist() == pytest.approx([0.0, 0.6730116670092565, 0.6730116670092565], abs=1e-12)
    assert scores["mi"].tolist() == pytest.approx([0.0, 0.20503802928608567, 0.0], abs=1e-12)


def test_entropy_against_known_values_and_scipy() -> None:
    # uniform over C classes: ln C; one-hot: 0 (no NaN from 0 · log 0)
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert entropy(probs).tolist() == pytest.approx([math.log(4), 0.0, math.log(2)], abs=1e-6)
    # dim argument: classes along dim 0
    assert entropy(probs.T, dim=0).tolist() == pytest.approx([math.log(4), 0.0, math.log(2)], abs=1e-6)
    rand = random_member_probs(3, 20, 7, seed=0, zeros=True)
    assert np.allclose(entropy(rand).numpy(), scipy_entropy(rand.numpy(), axis=-1), atol=1e-12)


# --------------------------------------------------------------------------------------------
# ECE and reliability bins
# --------------------------------------------------------------------------------------------
def test_ece_known_bins() -> None:
    # 10 bins. conf / correct: 0.55 right, 0.58 wrong -> bin 5 (0.5, 0.6]: acc 0.5, conf 0.565;
    # 0.75 right -> bin 7: acc 1, conf 0.75; 0.95 right twice -> bin 9: acc 1, conf 0.95.
    # ECE = 2/5 · 0.065 + 1/5 · 0.25 + 2/5 · 0.05 = 0.026 + 0.05 + 0.02 = 0.096
    probs = torch.tensor([[0.45, 0.55], [0.58, 0.42], [0.25, 0.75], [0.95, 0.05], [0.05, 0.95]])
    targets = torch.tensor([1, 1, 1, 0, 1])
    assert expected_calibration_error(probs, targets, num_bins=10) == pytest.approx(0.096, abs=1e-6)
    acc, conf, count = reliability_bins(probs, targets, num_bins=10)
    assert count.tolist() == [0, 0, 0, 0, 0, 2, 0, 1, 0, 2]
    assert acc.tolist() == pytest.approx([0, 0, 0, 0, 0, 0.5, 0, 1, 0, 1])
    assert conf.tolist() == pytest.approx([0, 0, 0, 0, 0, 0.565, 0, 0.75, 0, 0.95], abs=1e-6)
    assert count.dtype == torch.int64


def test_reliability_bins_edges_are_upper_inclusive() -> None:
    # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1]; confidence 0 joins bin 0.
    probs = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # conf 0     -> bin 0, predicts 0, target 0: right
            [0.25, 0.25, 0.25, 0.25],  # conf .25 -> bin 0, predicts 0, target 1: wrong
            [0.5, 0.5, 0.0, 0.0],  # conf .5    -> bin 1, predicts 0, target 0: right
            [0.125, 0.625, 0.25, 0.0],  # conf .625 -> bin 2, predicts 1, target 2: wrong
            [0.0, 0.0, 0.0, 1.0],  # conf 1     -> bin 3, predicts 3, target 3: right
        ]
    )
    targets = torch.tensor([0, 1, 0, 2, 3])
    acc, conf, count = reliability_bins(probs, targets, num_bins=4)
    assert count.tolist() == [2, 1, 1, 1]
    assert acc.tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    assert conf.tolist() == pytest.approx([0.125, 0.5, 0.625, 1.0])
    # 2/5 · |.5 − .125| + 1/5 · |1 − .5| + 1/5 · |0 − .625| + 0 = .15 + .1 + .125
    assert expected_calibration_error(probs, targets, num_bins=4) == pytest.approx(0.375)


def loop_ece(probs: np.ndarray, targets: np.ndarray, num_bins: int) -> float:
    """Reference ECE: plain Python loop over samples and bins."""
    total, n = 0.0, len(targets)
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        members = []
        for i in range(n):
            c = float(probs[i].max())
            if lo < c <= hi or (k == 0 and c == 0.0):
                members.append((c, float(int(probs[i].argmax()) == int(targets[i]))))
        if members:
            acc = sum(m[1] for m in members) / len(members)
            conf = sum(m[0] for m in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("num_bins", [1, 5, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_loop_reference(num_bins: int, seed: int) -> None:
    probs = random_member_probs(1, 200, 5, seed=seed)[0]
    targets = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(seed))
    expected = loop_ece(probs.numpy(), targets.numpy(), num_bins)
    assert expected_calibration_error(probs, targets, num_bins) == pytest.approx(expected, abs=1e-12)
    _, _, count = reliability_bins(probs, targets, num_bins)
    assert int(count.sum()) == 200


# --------------------------------------------------------------------------------------------
# Pairwise diversity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 10, 3), (4, 50, 6), (5, 31, 10)])
def test_pairwise_matrices_match_references(shape: tuple[int, int, int]) -> None:
    probs = random_member_probs(*shape, seed=sum(shape), zeros=True)
    m, n, _ = shape
    p = probs.numpy()
    ref_dis = np.zeros((m, m))
    ref_jsd = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            ref_dis[i, j] = sum(int(p[i, s].argmax() != p[j, s].argmax()) for s in range(n)) / n
            # scipy returns the square root of the JS divergence (natural log by default)
            ref_jsd[i, j] = np.mean(jensenshannon(p[i], p[j], axis=-1) ** 2)
    dis, jsd = pairwise_disagreement(probs), pairwise_jsd(probs)
    assert np.allclose(dis.numpy(), ref_dis, atol=1e-12)
    assert np.allclose(jsd.numpy(), ref_jsd, atol=1e-10)
    for matrix in (dis, jsd):
        assert matrix.shape == (m, m)
        assert torch.equal(matrix, matrix.T)
        assert torch.all(matrix.diagonal() == 0)
    # the scalar disagreement is the mean over pairs i < j, i.e. per sample the fraction of
    # disagreeing pairs, averaged over samples
    per_sample = [
        np.mean([p[i, s].argmax() != p[j, s].argmax() for i in range(m) for j in range(i + 1, m)]) for s in range(n)
    ]
    targets = torch.zeros(n, dtype=torch.int64)
    assert predictive_metrics(probs, targets)["disagreement"] == pytest.approx(np.mean(per_sample), abs=1e-12)


def test_pairwise_jsd_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    import ensemble_lab.metrics.classification as metrics

    probs = random_member_probs(4, 37, 5, seed=3)
    full = pairwise_jsd(probs)
    # force chunks of a single sample: the result must not depend on the chunk size
    monkeypatch.setattr(metrics, "_JSD_CHUNK_ELEMENTS", 1)
    assert torch.allclose(pairwise_jsd(probs), full, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Properties: mi >= 0, identical members, M = 1, zeros, float32
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_mi_non_negative_and_against_scipy(seed: int) -> None:
    probs = random_member_probs(5, 100, 4, seed=seed, zeros=seed == 2)
    scores = uncertainty_scores(probs)
    assert torch.all(scores["mi"] >= 0)
    p = probs.numpy()
    ref_mi = scipy_entropy(p.mean(0), axis=-1) - scipy_entropy(p, axis=-1).mean(0)
    assert np.allclose(scores["mi"].numpy(), np.maximum(ref_mi, 0), atol=1e-12)
    assert np.allclose(scores["msp"].numpy(), 1 - p.mean(0).max(-1), atol=1e-12)


def test_identical_members_have_no_diversity() -> None:
    single = random_member_probs(1, 40, 6, seed=7, zeros=True)
    probs = single.expand(3, -1, -1)  # (3, N, C), three copies of one member
    targets = torch.randint(0, 6, (40,), generator=torch.Generator().manual_seed(7))
    out = predictive_metrics(probs, targets)
    assert out["mi"] == pytest.approx(0.0, abs=1e-12)
    assert out["disagreement"] == 0.0
    # mi is mean_m KL(p_m ‖ p̄): exactly 0 (the difference of entropies would be about ±5e-16 here)
    many = random_member_probs(1, 1000, 10, seed=8).expand(3, -1, -1)  # (3, 1000, 10)
    assert torch.all(uncertainty_scores(many)["mi"] == 0)
    assert np.array_equal(out["pairwise_disagreement"], np.zeros((3, 3)))
    assert np.allclose(out["pairwise_jsd"], np.zeros((3, 3)), atol=1e-12)
    assert out["entropy"] == pytest.approx(out["expected_entropy"], abs=1e-12)
    assert out["member_acc"] == [out["acc"]] * 3


def test_single_member() -> None:
    probs, targets = hand_case()
    out = predictive_metrics(probs[:1], targets)
    assert set(out) == PREDICTIVE_KEYS
    assert out["disagreement"] == 0.0
    assert out["mi"] == 0.0
    assert out["pairwise_disagreement"] == [[0.0]]
    assert out["pairwise_jsd"] == [[0.0]]
    # member 0 alone: predicts 0, 0, 1 -> 1/3 right; its NLL and ECE equal the ensemble's
    assert out["acc"] == pytest.approx(1 / 3)
    assert out["member_acc"] == pytest.approx([1 / 3])
    assert out["member_nll"] == pytest.approx([out["nll"]])
    assert out["member_ece"] == pytest.approx([out["ece"]])
    assert out["entropy"] == pytest.approx(out["expected_entropy"])


def test_float32_with_exact_zeros_is_finite() -> None:
    # one-hot members; member 0 gives probability exactly 0 to the true class of sample 0
    probs = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
            [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]],
        ],
        dtype=torch.float32,
        requires_grad=False,
    )
    targets = torch.tensor([0, 0])
    out = predictive_metrics(probs, targets)
    flat = [v for v in out.values() if isinstance(v, float)]
    flat += [x for key in ("member_acc", "member_nll", "member_ece") for x in out[key]]
    flat += [x for key in ("pairwise_disagreement", "pairwise_jsd") for row in out[key] for x in row]
    assert all(math.isfinite(x) for x in flat)
    # p̄[y] = 0 for sample 0 (clamped at 1e-12: -ln 1e-12 = 27.631), p̄[y] = 0.5 for sample 1
    assert out["nll"] == pytest.approx((-math.log(NLL_EPS) - math.log(0.5)) / 2)
    # sample 1: members disagree (0 vs 1), mi = H(.5, .5) − 0 = ln 2; sample 0: 0
    assert out["mi"] == pytest.approx(math.log(2) / 2)
    assert out["pairwise_jsd"][0][1] == pytest.approx(math.log(2) / 2)
    for value in uncertainty_scores(probs).values():
        assert torch.isfinite(value).all()
    assert torch.isfinite(entropy(probs)).all()


def test_float32_random_matches_float64() -> None:
    probs64 = random_member_probs(4, 64, 5, seed=11, zeros=True)
    probs32 = probs64.float()
    assert not probs32.requires_grad
    targets = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(11))
    out32, out64 = predictive_metrics(probs32, targets), predictive_metrics(probs64, targets)
    for key in ("acc", "nll", "brier", "entropy", "expected_entropy", "mi", "disagreement"):
        assert isinstance(out32[key], float)
        assert out32[key] == pytest.approx(out64[key], rel=1e-5, abs=1e-6)
    assert isinstance(out32["member_acc"], list) and len(out32["member_acc"]) == 4


# --------------------------------------------------------------------------------------------
# OOD detection against scikit-learn
# --------------------------------------------------------------------------------------------
OOD_FAMILIES = ("auroc", "aupr", "fpr95", "aupr_in", "fpr95_in")
OOD_KEYS = {f"{m}_{s}" for m in OOD_FAMILIES for s in ("msp", "entropy", "mi")}


def sklearn_ood(id_scores: np.ndarray, ood_scores: np.ndarray, drop_intermediate: bool = False) -> dict:
    """Both conventions from scikit-learn: OOD positive on the scores, ID positive on the negated scores."""
    labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    scores = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    fpr_in, tpr_in, _ = roc_curve(1 - labels, -scores, drop_intermediate=drop_intermediate)
    return {
        "auroc": roc_auc_score(labels, scores),
        "aupr": average_precision_score(labels, scores),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in": average_precision_score(1 - labels, -scores),
        "fpr95_in": fpr_in[np.argmax(tpr_in >= 0.95)],
    }


def test_ood_detection_hand_worked() -> None:
    # perfectly separated
    out = ood_detection(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5]))
    assert out == pytest.approx({"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "fpr95_in": 0.0})
    # reversed: every ID above every OOD. AP: precision at the OOD points is 1/4 and 2/5 -> (1/4 + 2/5)/2;
    # ID positive (low scores first): precision at the ID points is 1/3, 2/4, 3/5
    out = ood_detection(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.1, 0.2]))
    assert out == pytest.approx({"auroc": 0.0, "aupr": 0.325, "fpr95": 1.0, "aupr_in": (1 / 3 + 2 / 4 + 3 / 5) / 3, "fpr95_in": 1.0})
    # all tied: one threshold with everything positive; one tied ID/OOD pair counts 1/2
    out = ood_detection(torch.tensor([0.5, 0.5]), torch.tensor([0.5]))
    assert out == pytest.approx({"auroc": 0.5, "aupr": 1 / 3, "fpr95": 1.0, "aupr_in": 2 / 3, "fpr95_in": 1.0})
    # tpr reaches exactly 0.95 (19 of 20 OOD above every ID) before the first ID sample: fpr95 = 0.
    # AUROC: 19 OOD beat both IDs, OOD score 1 beats ID 0.5 only -> (19·2 + 1)/40.
    ood = torch.arange(1.0, 21.0)  # 1, 2, ..., 20
    out = ood_detection(torch.tensor([1.5, 0.5]), ood)
    assert out["fpr95"] == 0.0


def test_id_positive_aupr_and_fpr95_by_hand() -> None:
    # ID 0.1, 0.2, 0.6; OOD 0.4, 0.5 (higher = more OOD). ID positive ranks by −score: 0.1, 0.2 (ID), 0.4, 0.5
    # (OOD), 0.6 (ID). Precision at the ID points: 1, 1, 3/5 -> AP = (1 + 1 + 3/5)/3. Accepting 95% of ID
    # needs every ID image, i.e. everything up to 0.6: both OOD images accepted, fpr95_in = 1.
    out = ood_detection(torch.tensor([0.1, 0.2, 0.6]), torch.tensor([0.4, 0.5]))
    assert out["aupr_in"] == pytest.approx((1 + 1 + 3 / 5) / 3) and out["fpr95_in"] == 1.0
    # 19 ID images below both OOD images (2, 3) and one between them (2.5): 95% of ID (19 of 20) are
    # accepted at 0.95 with no OOD image; OOD positive, reaching both OOD images lets the 2.5 through.
    ids = torch.cat([torch.arange(1.0, 20.0) / 20, torch.tensor([2.5])])  # 0.05 ... 0.95, and 2.5
    out = ood_detection(ids, torch.tensor([2.0, 3.0]))
    assert out["fpr95_in"] == 0.0 and out["fpr95"] == pytest.approx(1 / 20)
    assert out["auroc"] == pytest.approx(39 / 40)


@pytest.mark.parametrize("sizes", [(1, 1), (5, 7), (50, 30), (300, 1000)])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ood_detection_matches_sklearn(sizes: tuple[int, int], ties: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_id, n_ood = sizes
    if ties:
        # few distinct values: many threshold groups hold both ID and OOD samples
        id_scores = rng.integers(0, 5, n_id).astype(np.float64)
        ood_scores = rng.integers(1, 6, n_ood).astype(np.float64)
    else:
        id_scores = rng.normal(0.0, 1.0, n_id)
        ood_scores = rng.normal(0.8, 1.0, n_ood)
    out = ood_detection(torch.from_numpy(id_scores), torch.from_numpy(ood_scores))
    ref = sklearn_ood(id_scores, ood_scores)
    assert set(out) == set(OOD_FAMILIES)
    for key in ref:
        assert isinstance(out[key], float)
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    if not ties:
        # without ties the default (dropping collinear points) roc_curve gives the same fpr95
        assert out["fpr95"] == pytest.approx(sklearn_ood(id_scores, ood_scores, drop_intermediate=True)["fpr95"])


def test_ood_detection_float32_scores() -> None:
    rng = np.random.default_rng(5)
    id_scores = rng.random(100).astype(np.float32)
    ood_scores = (rng.random(80) + 0.3).astype(np.float32)
    out = ood_detection(torch.from_numpy(id_scores), torch.from_numpy(ood_scores))
    ref = sklearn_ood(id_scores.astype(np.float64), ood_scores.astype(np.float64))
    assert out == pytest.approx(ref, abs=1e-12)


def test_ood_detection_needs_both_sets() -> None:
    with pytest.raises(ValueError, match="at least one ID and one OOD"):
        ood_detection(torch.tensor([]), torch.tensor([0.1]))


def test_ood_metrics_against_sklearn_on_independent_scores() -> None:
    id_probs = random_member_probs(3, 60, 4, seed=21)
    # OOD: flatter members (logits scaled down) that still disagree
    ood_probs = (torch.log(random_member_probs(3, 40, 4, seed=22)) * 0.3).softmax(-1)
    out = ood_metrics(id_probs.float(), ood_probs.float())
    assert set(out) == OOD_KEYS

    def scores_np(p: np.ndarray) -> dict[str, np.ndarray]:
        mean = p.mean(0)
        total = scipy_entropy(mean, axis=-1)
        return {
            "msp": 1 - mean.max(-1),
            "entropy": total,
            "mi": np.maximum(total - scipy_entropy(p, axis=-1).mean(0), 0),
        }

    id_s = scores_np(id_probs.float().double().numpy())
    ood_s = scores_np(ood_probs.float().double().numpy())
    for name in ("msp", "entropy", "mi"):
        ref = sklearn_ood(id_s[name], ood_s[name])
        for metric in OOD_FAMILIES:
            assert out[f"{metric}_{name}"] == pytest.approx(ref[metric], abs=1e-9), f"{metric}_{name}"
    assert out["auroc_entropy"] > 0.5


# --------------------------------------------------------------------------------------------
# Shapes and devices
# --------------------------------------------------------------------------------------------
def test_bad_shapes_raise() -> None:
    probs, targets = hand_case()
    with pytest.raises(ValueError, match=r"\(M, N, C\)"):
        predictive_metrics(probs[0], targets)
    with pytest.raises(ValueError, match="targets"):
        predictive_metrics(probs, targets[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    probs = random_member_probs(4, 500, 10, seed=9, zeros=True).float()
    targets = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(9))
    cpu = predictive_metrics(probs, targets)
    gpu = predictive_metrics(probs.cuda(), targets.cuda())
    for key, value in cpu.items():
        assert np.allclose(gpu[key], value, atol=1e-10), key
    scores = uncertainty_scores(probs.cuda())
    assert all(s.device.type == "cuda" for s in scores.values())
    cpu_ood = ood_metrics(probs[:, :250], probs[:, 250:])
    gpu_ood = ood_metrics(probs[:, :250].cuda(), probs[:, 250:].cuda())
    assert gpu_ood == pytest.approx(cpu_ood, abs=1e-10)


# --------------------------------------------------------------------------------------------
# Mutual information: exact zero for identical members, H[p̄] − mean H[p_m] otherwise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_members", range(1, 9))
def test_mi_of_identical_members_is_exactly_zero(num_members: int) -> None:
    # a plain mean of M equal entropies (or probabilities) rounds away from the value for M = 3, 7, 8
    probs = random_member_probs(1, 2000, 10, seed=30, zeros=True).expand(num_members, -1, -1)
    targets = torch.zeros(2000, dtype=torch.int64)
    assert torch.all(uncertainty_scores(probs)["mi"] == 0.0)
    assert predictive_metrics(probs, targets)["mi"] == 0.0


@pytest.mark.parametrize("num_members,zeros", [(2, False), (3, True), (7, False), (8, True)])
def test_mi_is_entropy_of_mean_minus_mean_entropy(num_members: int, zeros: bool) -> None:
    probs = random_member_probs(num_members, 300, 6, seed=31 + num_members, zeros=zeros)
    p = probs.numpy()
    reference = scipy_entropy(p.mean(0), axis=-1) - np.mean([scipy_entropy(p[m], axis=-1) for m in range(num_members)], axis=0)
    assert np.allclose(uncertainty_scores(probs)["mi"].numpy(), reference, rtol=0, atol=1e-12)
    out = predictive_metrics(probs, torch.zeros(300, dtype=torch.int64))
    assert out["mi"] == pytest.approx(reference.mean(), abs=1e-12)
    assert out["entropy"] - out["expected_entropy"] == pytest.approx(reference.mean(), abs=1e-12)


@pytest.mark.parametrize("num_members", [3, 7, 8])
def test_collapsed_ensemble_cannot_detect_ood_by_mi(num_members: int) -> None:
    # every member the same network: mi is 0 on every sample, so it ranks nothing (AUROC 1/2)
    id_probs = random_member_probs(1, 500, 10, seed=40).expand(num_members, -1, -1)
    ood_probs = random_member_probs(1, 400, 10, seed=41).expand(num_members, -1, -1)
    out = ood_metrics(id_probs, ood_probs)
    labels = np.r_[np.zeros(500), np.ones(400)]
    assert out["auroc_mi"] == roc_auc_score(labels, np.zeros(900)) == 0.5


# --------------------------------------------------------------------------------------------
# NaN / inf from the model: one clear error, never a silently NaN metric or a NaN ranked as OOD
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_probabilities_are_refused(bad: float) -> None:
    probs = random_member_probs(3, 20, 4, seed=50)
    probs[1, 7, 2] = bad
    probs[2, 3, 0] = bad
    targets = torch.zeros(20, dtype=torch.int64)
    for call in (lambda: predictive_metrics(probs, targets), lambda: uncertainty_scores(probs),
                 lambda: ood_metrics(random_member_probs(3, 5, 4, seed=51), probs)):
        with pytest.raises(ValueError, match=r"2 of 240 .*NaN/inf probabilities") as caught:
            call()
        assert isinstance(caught.value, EnsembleLabError)
        assert "\n" not in str(caught.value)


def test_non_finite_scores_are_refused() -> None:
    scores = torch.tensor([0.1, math.nan, 0.3, math.nan, -math.inf])
    with pytest.raises(ValueError, match=r"3 of 5 .*NaN/inf") as caught:
        ood_detection(torch.tensor([0.1, 0.2]), scores)
    assert isinstance(caught.value, EnsembleLabError)
    with pytest.raises(ValueError, match=r"3 of 5 .*NaN/inf"):
        ood_detection(scores, torch.tensor([0.1, 0.2]))


# --------------------------------------------------------------------------------------------
# A single model has no mutual information to detect OOD with
# --------------------------------------------------------------------------------------------
def test_single_model_mi_detection_is_undefined() -> None:
    id_probs, ood_probs = random_member_probs(1, 60, 4, seed=60), random_member_probs(1, 30, 4, seed=61) ** 0.2
    ood_probs = ood_probs / ood_probs.sum(-1, keepdim=True)
    out = ood_metrics(id_probs, ood_probs)
    assert set(out) == OOD_KEYS
    assert all(out[f"{m}_mi"] is None for m in OOD_FAMILIES)
    # msp and entropy stay defined for one model
    id_total, ood_total = scipy_entropy(id_probs[0].numpy(), axis=-1), scipy_entropy(ood_probs[0].numpy(), axis=-1)
    labels = np.r_[np.zeros(60), np.ones(30)]
    assert out["auroc_entropy"] == pytest.approx(roc_auc_score(labels, np.r_[id_total, ood_total]), abs=1e-12)
