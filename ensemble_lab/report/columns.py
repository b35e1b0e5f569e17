"""Which metrics a report shows: the default columns per set role and the presets (``--preset``)."""

from ensemble_lab.metrics.corruptions import CORRUPTION_AVERAGES
from ensemble_lab.metrics.registry import DE_COLUMNS, OOD_SCORES, ood_name

#: regression's columns (a column no run of a table has is left out, so each task's table shows its own)
REGRESSION_COLUMNS = ("rmse", "crps", "coverage_90", "width_90", "epistemic_share")
#: columns of id and shift sets, and of ood sets (class-based metrics mean nothing on OOD data; a regression gap
#: set keeps its targets, so its errors are shown beside the detection by total and epistemic variance)
ID_COLUMNS = ("acc", "nll", "ece", "mi", "disagreement", *REGRESSION_COLUMNS, *CORRUPTION_AVERAGES)  # c_*: only <corrupted>_mean sets
ID_COLUMNS += DE_COLUMNS  # ts_nll, dee, de_gain_*: computed by the report where a study has single and DeepEnsemble rows
OOD_COLUMNS = tuple(ood_name(m, s) for s in OOD_SCORES for m in ("auroc", "aupr", "fpr95")) + ("mi", "disagreement")
OOD_COLUMNS += ("rmse", "nll", "crps", "auroc_variance", "auroc_epistemic")

#: what a preset shows, per role (``{score}``: --ood_score; ``{positive}``: "_in" for --ood_positive id); single_basin and
#: diversity: one table per id set, see report/layout.py
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "paper": {
        "id": ("acc", "nll", "ece"),
        "shift": ("acc", "nll", "ece", *CORRUPTION_AVERAGES),
        "ood": ("aupr{positive}_{score}", "auroc_{score}", "fpr95{positive}_{score}", "mi"),
    },
    "single_basin": {"id": ("acc", "nll", "ece", "mi", "disagreement")},
    # how many networks each row is worth: its TS-NLL, Deep-Ensemble equivalent and fraction of the DE's gain
    "dee": {role: ("acc", "nll", "ece", *DE_COLUMNS) for role in ("id", "shift")},
    # the architectures study's table: calibration beside the diversity of predictions and of weights
    "diversity": {"id": ("acc", "nll", "ece", "mi", "disagreement")},
    # calibration beyond one ECE, and the joint NLL beside the marginal one
    "calibration": {
        role: ("nll", "joint_nll_10", "ece", "ece_adaptive", "ece_classwise", "mce", "brier_reliability", "brier_resolution")
        for role in ("id", "shift")
    },
    # selective prediction (of --ood_score's confidence), conformal sets, and the logit OOD scores' AUROC
    "selective": {
        **{
            role: (
                "aurc_{score}",
                "augrc_{score}",
                "risk_at_80_{score}",
                "coverage_at_5_{score}",
                "conformal_coverage_aps",
                "conformal_set_size_aps",
            )
            for role in ("id", "shift")
        },
        "ood": ("auroc_{score}", "auroc_maxlogit", "auroc_energy", "auroc_variation_ratio", "auroc_expected_entropy"),
    },
}


def preset_columns(preset: str, score: str = "msp", positive: str = "ood") -> dict[str, tuple[str, ...]]:
    """The role -> metrics mapping of ``preset`` with the OOD score filled in; ``positive`` "id" takes
    aupr and fpr95 with ID as the positive class (``aupr_in_<score>``, ``fpr95_in_<score>``)."""
    suffix = "_in" if positive == "id" else ""
    return {role: tuple(c.format(score=score, positive=suffix) for c in columns) for role, columns in PRESETS[preset].items()}


