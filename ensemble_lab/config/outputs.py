"""A command's evaluation outputs: the user's choices (EvaluationOptions) and what results.json records
about the run (RunRecord), read from the command's configuration for the EvaluationOutputs callback."""

from pathlib import Path
from typing import Any, cast

import yaml

from ensemble_lab.config.run_config import as_tested, comparable, flatten
from ensemble_lab.evaluation.outputs import Calibration, EvaluationOptions, RunRecord
from ensemble_lab.runs.legacy_keys import translate_config


def evaluation_options(config: Any, subcommand: str | None) -> EvaluationOptions:
    """The options ``--save_predictions``, ``--figures``, ``--calibration``, ``--conformal_alpha``, ``--overwrite`` and (fit only)
    ``--eval_sets_every`` of a command's parsed ``config``."""
    return EvaluationOptions(
        save_predictions=bool(config.get("save_predictions", False)),
        figures=bool(config.get("figures", True)),
        calibration=cast(Calibration, str(config.get("calibration") or "none")),
        overwrite=bool(config.get("overwrite", False)),
        eval_sets_every=int(config.get("eval_sets_every") or 0) if subcommand == "fit" else 0,
        conformal_alpha=float(0.1 if config.get("conformal_alpha") is None else config.get("conformal_alpha")),
    )


def describe_run(record: RunRecord, config: Any, ran_with: dict[str, Any], run_dir: Path | None, fitting: bool) -> RunRecord:
    """``record`` with what results.json says about the run: where it goes (``run_dir``; None: the trainer's
    log_dir), its name, the options the test ran with (``ran_with``: the command's resolved configuration)
    and, for a test of a run's checkpoint, those its weights were trained with (the run's config.yaml) and
    what differs. ``config``: the command's parsed configuration; ``fitting``: the command is a fit."""
    trained_with = translate_config(_read_yaml(run_dir / "config.yaml")) if run_dir is not None else None  # older option names: today's
    run_name = config.get("run_name") or (trained_with or ran_with).get("run_name")
    # flat keys, without where the run lives (its directory, the checkpoint it resumed): results.json
    # depends on what was trained and tested, not on where
    if fitting:
        trained_with = ran_with  # the test after fit runs with the options it trained with
    tested, changes = as_tested(flatten(trained_with or ran_with), flatten(ran_with))
    return RunRecord(
        results_dir=str(run_dir) if run_dir is not None else None,
        run_name=run_name,
        run_config=tested,
        # unknown (None) where no training config is on record: an assembled ensemble, a run without its config.yaml
        test_changes=changes if trained_with is not None else None,
        fit_config=comparable(flatten(trained_with)) if trained_with is not None and changes else None,
        tested_checkpoint=record.tested_checkpoint,
        tested_checkpoint_record=record.tested_checkpoint_record,
        logging_step=record.logging_step,
    )


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None
