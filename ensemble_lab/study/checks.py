"""The study's checks before anything runs: every step's options, parsed by that step's own parser.

A run's fit arguments go through the CLI's parser (which builds its model and datamodule), its
connectivity step's through ``ensemble-lab connectivity``'s (its ``--set`` against the labelled sets of
that datamodule), and the study's ``report:`` list through ``ensemble-lab report``'s: a mistake in any
of them is one error before the first run trains, not a failure after the whole grid has run.
"""

import argparse
from typing import NoReturn

from ensemble_lab.config.lightning_cli import check_run
from ensemble_lab.config.run_config import comparable, flatten
from ensemble_lab.errors import ConfigError
from ensemble_lab.report import main as report
from ensemble_lab.study.records import remember_resolved
from ensemble_lab.study.spec import Study


def _raising(cli: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``cli`` whose errors are a one-line ConfigError (not its usage text and exit status 2)."""

    def error(message: str) -> NoReturn:
        raise ConfigError(message)

    setattr(cli, "error", error)  # argparse reports every mistake through self.error
    return cli


def validate(study: Study) -> None:
    """Raise ConfigError naming the first step of the study that would refuse its options, before any training:
    a run's fit arguments (the CLI's parser), its connectivity step (the command's parser and its --set
    against the sets the run's datamodule has) and the closing report's arguments (the report's parser).

    One run per method is parsed: its seeds differ only in ``--seed_everything`` and where they write,
    which no check depends on (parsing builds the model and datamodule: seconds for a ResNet grid).
    """
    from ensemble_lab.connectivity import command as connectivity  # imported on use: it loads matplotlib

    checked: set[str] = set()
    for run in study.runs:
        if run.name in checked:
            continue
        checked.add(run.name)
        step = "fit"
        try:
            argv = tuple(run.fit_args(resume=False))
            config, datamodule = check_run(argv)
            remember_resolved(run, comparable(flatten(config)))  # spares the comparisons a second parse
            if run.connectivity is not None:  # its --set must be a labelled set of the datamodule the run trains on
                step = "connectivity"
                options = _raising(connectivity.parser()).parse_args(run.connectivity_args()[1:])
                connectivity.check_set(options.set_name, datamodule)
        except ConfigError as error:
            where = "" if step == "fit" else f"{step}: "
            raise ConfigError(f"study run {run.label} ({run.run_dir}): {where}{error}") from None
    if study.report_args:  # the report reads the runs' results.json: here it gets the study directory to parse
        try:
            report.read_options([str(study.out), "--out", str(study.out), *study.report_args], _raising(report.parser()))
        except ConfigError as error:
            raise ConfigError(f"the study's 'report' arguments {list(study.report_args)}: {error}") from None
