"""The one home of every metric's facts: its task, which way is better, what it needs, how figures name it.

Each row (:class:`Metric`) describes one key that ``test`` writes into results.json (a set's metric, a
run-level weight-space key, a ``cost`` key) or that ``connectivity`` writes into connectivity.json. The
report's tables (bold best, arrows), the checkpoint monitors' direction check, the significance tests, the
figures' axis labels and the validation curves all read these rows; none of them keeps its own list or
reads a fact from a metric's name.

A new metric is one row: ``add(Metric("rmse", task="regression", direction=-1, label="RMSE",
needs_labels=True))``, or for an OOD-detection metric of every uncertainty score, :func:`add_ood_family`.
:func:`metric` looks a key up strictly (KeyError for an unknown one); :func:`lookup` is the lenient reading
for results.json files written by other versions (an unknown key is not ranked and shown by its name).

Pure data: no torch, importable anywhere.
"""

from dataclasses import dataclass

from ensemble_lab.metrics.corruptions import FACTS as CORRUPTION_FACTS

#: what a metric is measured on: classification outputs, regression outputs, or any model (cost, weights)
TASKS = ("classification", "regression", "any")
#: where a metric sits in results.json: in each test set's metrics, at the top level of the run, under "cost"
PLACES = ("set", "run", "cost")
#: the uncertainty scores an OOD-detection metric is computed from (``<family>_<score>``)
OOD_SCORES = ("msp", "entropy", "mi")


@dataclass(frozen=True)
class Metric:
    """The facts of one metric key.

    Attributes:
        name: the key as results.json (or connectivity.json, or a ``val/`` log tag) writes it.
        task: "classification", "regression" or "any" (cost, weight space: every model has them).
        direction: +1 when higher is better, -1 when lower is, 0 when not ranked (diversity, uncertainty, cost).
        label: how figures name it on an axis (tables show the key itself).
        group: what it measures: "predictive", "calibration", "uncertainty", "diversity", "per member",
            "ood detection", "weight space", "connectivity" or "cost".
        needs_labels: computed against the true classes / targets; an OOD set has none of the model's
            classes, so such a metric means nothing there (tables leave it out of ood sets).
        needs_ood: measured on an OOD set against an in-distribution set (OOD detection).
        recomputable: the report's bootstrap can recompute it from saved predictions (member probabilities, or a
            regression model's means and variances).
        val_curve: logged as ``val/<name>`` every validation epoch (and so a checkpoint can monitor it).
        place: "set", "run" or "cost" (see :data:`PLACES`).
        per_member: a list (or matrix) over members rather than one number.
        measured: a measurement of the machine (throughput, memory) that no rerun repeats exactly.
        family: an OOD-detection metric's family (``auroc``, ``aupr_in``, ...), else None.
        score: an OOD-detection metric's uncertainty score (msp, entropy, mi), else None.
    """

    name: str
    task: str
    direction: int
    label: str = ""
    group: str = ""
    needs_labels: bool = False
    needs_ood: bool = False
    recomputable: bool = False
    val_curve: bool = False
    place: str = "set"
    per_member: bool = False
    measured: bool = False
    family: str | None = None
    score: str | None = None

    def __post_init__(self) -> None:
        """Check the row: a known task, direction and place; the label defaults to the name."""
        if self.task not in TASKS:
            raise ValueError(f"metric {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"metric {self.name!r}: direction must be +1 (higher is better), -1 (lower) or 0 (not ranked), got {self.direction!r}")
        if self.place not in PLACES:
            raise ValueError(f"metric {self.name!r}: place must be one of {', '.join(PLACES)}, got {self.place!r}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def mode(self) -> str | None:
        """The checkpoint / early-stopping mode that follows it: "max", "min", or None when not ranked."""
        return {1: "max", -1: "min"}.get(self.direction)


_ROWS: dict[str, Metric] = {}


def add(row: Metric) -> Metric:
    """Register ``row``; ValueError if a metric of that name is already registered. Returns the row."""
    if row.name in _ROWS:
        raise ValueError(f"metric {row.name!r} is already registered ({_ROWS[row.name]})")
    _ROWS[row.name] = row
    return row


def ood_name(family: str, score: str) -> str:
    """The key of OOD-detection metric ``family`` of uncertainty score ``score``: ``<family>_<score>``."""
    return f"{family}_{score}"


def add_ood_family(
    family: str, direction: int, label: str, task: str = "classification", scores: tuple[str, ...] = OOD_SCORES, recomputable: bool = True
) -> list[Metric]:
    """Register OOD-detection metric ``family`` for each uncertainty score (``<family>_<score>``, labelled
    ``"<label> (<score>)"``): measured on an OOD set against an id set, needing no labels of the OOD set;
    ``recomputable``: the report's bootstrap (of member probabilities) can recompute it."""
    return [
        add(Metric(ood_name(family, s), task, direction, f"{label} ({s})", "ood detection", needs_ood=True, recomputable=recomputable, family=family, score=s))
        for s in scores
    ]


def metric(name: str) -> Metric:
    """The row of metric key ``name``; KeyError naming it when no row has it."""
    try:
        return _ROWS[name]
    except KeyError:
        raise KeyError(f"no metric {name!r} in ensemble_lab.metrics.registry; add a row with registry.add(Metric(...))") from None


def lookup(name: str) -> Metric:
    """The row of ``name``, or for a key this version does not know (a results.json of another version) a row
    that is not ranked, needs nothing and is shown by its name."""
    return _ROWS.get(name) or Metric(name, "any", 0, group="unknown")


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is, 0 when ``name`` is not ranked or unknown."""
    return lookup(name).direction


def label(name: str) -> str:
    """How figures name ``name`` on an axis (its key when unknown)."""
    return lookup(name).label


def rows(task: str | None = None, **facts: object) -> tuple[Metric, ...]:
    """Every registered row, in registration order; ``task`` keeps those of that task and "any"; each
    keyword keeps the rows whose attribute equals it, e.g. ``rows(place="cost")``, ``rows(needs_ood=True)``."""
    return tuple(
        r for r in _ROWS.values() if (task is None or r.task in (task, "any")) and all(getattr(r, k) == v for k, v in facts.items())
    )


def names(task: str | None = None, **facts: object) -> tuple[str, ...]:
    """The keys of :func:`rows` with the same filters."""
    return tuple(r.name for r in rows(task, **facts))


# ---- the rows ------------------------------------------------------------------------------------
# a test set's metrics of the ensemble's mean prediction (metrics/classification.py predictive_metrics)
add(Metric("acc", "classification", 1, "accuracy", "predictive", needs_labels=True, recomputable=True, val_curve=True))
# nll: the ensemble's NLL of either task (classification: of the mean probabilities; regression: of the mixture)
add(Metric("nll", "any", -1, "NLL", "predictive", needs_labels=True, recomputable=True, val_curve=True))
add(Metric("brier", "classification", -1, group="predictive", needs_labels=True, recomputable=True))
add(Metric("ece", "classification", -1, "ECE", "calibration", needs_labels=True, recomputable=True, val_curve=True))
add(Metric("entropy", "classification", 0, group="uncertainty", recomputable=True))
add(Metric("expected_entropy", "classification", 0, group="uncertainty", recomputable=True))
add(Metric("mi", "classification", 0, "mi (epistemic)", "diversity", recomputable=True, val_curve=True))
add(Metric("disagreement", "classification", 0, group="diversity", recomputable=True, val_curve=True))
# averages over every corruption × severity of a -C dataset (metrics/corruptions.py), in the set <corrupted>_mean
for _name, _direction, _labels, _label in CORRUPTION_FACTS:
    add(Metric(_name, "classification", _direction, _label, "robustness", needs_labels=_labels))
# each member's own (lists over members) and each pair's (M×M matrices): described, never ranked
for _name in ("member_acc", "member_nll", "member_ece"):
    add(Metric(_name, "classification", 0, group="per member", needs_labels=True, per_member=True))
for _name in ("pairwise_disagreement", "pairwise_jsd"):
    add(Metric(_name, "classification", 0, group="diversity", per_member=True))
# OOD detection of an ood set against the first id set (metrics/ood.py): OOD as the positive class, then ID
add_ood_family("auroc", 1, "AUROC")
add_ood_family("aupr", 1, "AUPR")
add_ood_family("fpr95", -1, "FPR95")
add_ood_family("aupr_in", 1, "AUPR-in")
add_ood_family("fpr95_in", -1, "FPR95-in")
# a regression set's metrics (metrics/regression.py regression_metrics, in the targets' units); the gap (ood)
# set keeps its targets, so these are reported there too. Coverage is best at its level: not ranked here.
for _name, _direction, _label, _group in (
    ("rmse", -1, "RMSE", "predictive"), ("mae", -1, "MAE", "predictive"), ("crps", -1, "CRPS", "predictive"),
    ("coverage_50", 0, "Coverage@50", "calibration"), ("coverage_90", 0, "Coverage@90", "calibration"),
    ("coverage_95", 0, "Coverage@95", "calibration"), ("width_50", -1, "Width@50", "calibration"),
    ("width_90", -1, "Width@90", "calibration"), ("width_95", -1, "Width@95", "calibration"), ("qce", -1, "QCE", "calibration"),
    ("aleatoric", 0, "Aleatoric var.", "uncertainty"), ("epistemic", 0, "Epistemic var.", "diversity"),
    ("epistemic_share", 0, "Epistemic share", "diversity"), ("error_correlation", 0, "Error corr.", "diversity"),
    ("epistemic_std", 0, "Epistemic std", "diversity"),
):  # fmt: skip
    _labels = _group in ("predictive", "calibration") or _name == "error_correlation"
    _curve = _name in ("rmse", "crps", "epistemic_share")
    # the report's bootstrap recomputes every one but error_correlation (metrics/regression_bootstrap.py)
    add(Metric(_name, "regression", _direction, _label, _group, needs_labels=_labels, recomputable=_name != "error_correlation", val_curve=_curve))
# OOD detection by a regression model's total variance and its epistemic variance (metrics/regression.py ood_scores)
REGRESSION_OOD_SCORES = ("variance", "epistemic")
for _family, _direction, _label in (("auroc", 1, "AUROC"), ("aupr", 1, "AUPR"), ("fpr95", -1, "FPR95"), ("aupr_in", 1, "AUPR-in"), ("fpr95_in", -1, "FPR95-in")):
    add_ood_family(_family, _direction, _label, task="regression", scores=REGRESSION_OOD_SCORES)
# the members' weights (metrics/weight_space.py): M×M matrices and their off-diagonal means; weight_cosine is
# also the val/weight_cosine curve
for _name, _label in (("weight_cosine", "weight cosine (effective)"), ("weight_cosine_stored", "weight cosine (stored)")):
    add(Metric(_name, "any", 0, _label, "weight space", place="run", per_member=True))
    add(Metric(f"{_name}_mean", "any", 0, _label, "weight space", place="run"))
# loss / error barriers between members (connectivity.json, ensemble-lab connectivity): described, not ranked
for _name in ("barrier_loss_mean", "barrier_error_mean", "frankle_barrier_loss_mean", "frankle_barrier_error_mean",
              "aligned_barrier_loss_mean", "aligned_barrier_error_mean"):  # fmt: skip
    add(Metric(_name, "any", 0, group="connectivity", place="run"))
# what a method costs (results.json "cost", metrics/cost.py)
for _name in ("parameters", "parameters_per_member", "flops_per_image", "images_per_s", "peak_memory_bytes", "peak_tensor_bytes"):
    add(Metric(_name, "any", 0, group="cost", place="cost", measured=_name in ("images_per_s", "peak_memory_bytes")))


# ---- issue 25's metrics: each metric module's FACTS table lives here (the module imports it back), so the
# facts have one home and registering them needs no torch. A row of a FACTS table: (name or pattern with
# ``<score>``, direction, needs labels, display name).
Facts = tuple[tuple[str, int, bool, str], ...]
#: metrics/calibration_errors.py: MCE, adaptive and classwise ECE, Murphy's Brier decomposition
CALIBRATION_FACTS: Facts = (
    ("mce", -1, True, "MCE"),
    ("ece_adaptive", -1, True, "adaptive ECE"),
    ("ece_classwise", -1, True, "classwise ECE"),
    ("brier_reliability", -1, True, "Brier reliability"),
    ("brier_resolution", 1, True, "Brier resolution"),
    ("brier_uncertainty", 0, True, "Brier uncertainty"),
)
#: metrics/selective.py: the confidence scores of the risk-coverage curves, and the numbers read from them
SELECTIVE_SCORES = ("msp", "entropy", "mi")
SELECTIVE_FACTS: Facts = (
    ("aurc_<score>", -1, True, "AURC (<score>)"),
    ("augrc_<score>", -1, True, "AUGRC (<score>)"),
    ("risk_at_80_<score>", -1, True, "risk @ 80% coverage (<score>)"),
    ("coverage_at_5_<score>", 1, True, "coverage @ 5% risk (<score>)"),
)
#: metrics/ood_scores.py: OOD scores beside msp / entropy / mi (maxlogit and energy of the members' mean logits)
LOGIT_SCORES = ("maxlogit", "energy", "variation_ratio", "expected_entropy")
LOGIT_OOD_FACTS: Facts = (
    ("auroc_<score>", 1, False, "AUROC (<score>)"),
    ("aupr_<score>", 1, False, "AUPR (<score>)"),
    ("fpr95_<score>", -1, False, "FPR95 (<score>)"),
    ("aupr_in_<score>", 1, False, "AUPR-in (<score>)"),
    ("fpr95_in_<score>", -1, False, "FPR95-in (<score>)"),
)
#: metrics/joint_nll.py: the joint NLL of τ = 2 and 10 dyadically sampled inputs, per input
JOINT_NLL_FACTS: Facts = (
    ("joint_nll_2", -1, True, "joint NLL (τ=2)"),
    ("joint_nll_10", -1, True, "joint NLL (τ=10)"),
)
#: metrics/conformal.py: split conformal sets (coverage should be 1 − α, not higher: not ranked) and intervals
CONFORMAL_SCORES = ("thr", "aps", "raps")
CONFORMAL_FACTS: Facts = (
    ("conformal_coverage_<score>", 0, True, "conformal coverage (<score>)"),
    ("conformal_set_size_<score>", -1, True, "conformal set size (<score>)"),
    ("conformal_interval_coverage", 0, True, "conformal interval coverage"),
    ("conformal_interval_width", -1, True, "conformal interval width"),
)
#: metrics/de_equivalent.py, computed by the report from a study's saved predictions (report/de_table.py), never by
#: ``test``: a row's own temperature-scaled NLL, its Deep-Ensemble equivalent, and the fraction of the Deep
#: Ensemble's gain in each of DE_GAIN_METRICS
DE_GAIN_METRICS = ("nll", "ece", "acc")
DE_FACTS: Facts = (
    ("ts_nll", -1, True, "TS-NLL"),
    ("dee", 1, True, "Deep-Ensemble equivalent"),
    ("de_gain_<score>", 1, True, "fraction of the DE's gain (<score>)"),
)


def add_facts(facts: Facts, group: str, scores: tuple[str, ...] = (), task: str = "classification", **flags: object) -> list[Metric]:
    """Register the rows of a FACTS table (``<score>`` patterns once per score of ``scores``); ``flags`` are
    further :class:`Metric` fields (e.g. ``needs_ood=True``). Returns the rows."""
    added = []
    for pattern, sign, needs_labels, shown in facts:
        for score in scores if "<score>" in pattern else ("",):
            family = pattern.removesuffix("_<score>") if flags.get("needs_ood") else None
            name, label_ = pattern.replace("<score>", score), shown.replace("<score>", score)
            added.append(add(Metric(name, task, sign, label_, group, needs_labels=needs_labels, family=family, score=score or None, **flags)))  # type: ignore[arg-type]
    return added


add_facts(CALIBRATION_FACTS, "calibration")
add_facts(SELECTIVE_FACTS, "selective", SELECTIVE_SCORES)
add_facts(LOGIT_OOD_FACTS, "ood detection", LOGIT_SCORES, needs_ood=True)
add_facts(JOINT_NLL_FACTS, "predictive")
add_facts(CONFORMAL_FACTS[:2], "conformal", CONFORMAL_SCORES)
add_facts(CONFORMAL_FACTS[2:], "conformal", task="regression")
add_facts(DE_FACTS, "deep-ensemble equivalent", DE_GAIN_METRICS)

#: the report's Deep-Ensemble columns (report/de_table.py): computed from a study's runs, not read from results.json
DE_COLUMNS = names(group="deep-ensemble equivalent")
#: the OOD-detection families (``<family>_<score>``), in registration order
OOD_FAMILIES = tuple(dict.fromkeys(r.family for r in rows(needs_ood=True) if r.family))
#: the metrics every validation epoch logs as ``val/<name>`` (the ones a checkpoint can monitor)
VAL_CURVES = names("classification", val_curve=True)
#: the curves a regression model's validation logs instead (nll of the mixture, rmse, crps, epistemic share)
REGRESSION_VAL_CURVES = names("regression", val_curve=True)
