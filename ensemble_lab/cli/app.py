"""``ensemble-lab``: dispatches to LightningCLI's fit / validate / test / predict and to the extra
subcommands (study, report, connectivity), and turns user errors into one line with exit status 2."""

import difflib
import os
import sys
from collections.abc import Callable, Sequence

from ensemble_lab import __version__
from ensemble_lab.config.failures import user_message
from ensemble_lab.config.lightning_cli import run_lightning_cli

#: subcommands that are not LightningCLI's: name -> (handler(argv), one-line help)
EXTRA_SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], object], str]] = {}


def _report_main(argv: list[str]) -> None:
    from ensemble_lab.report.main import report_main  # imported on use: keeps `fit` startup lean

    report_main(argv)


def _study_main(argv: list[str]) -> None:
    from ensemble_lab.study.main import study_main  # imported on use: keeps `fit` startup lean

    study_main(argv)


def _connectivity_main(argv: list[str]) -> None:
    from ensemble_lab.connectivity.command import connectivity_main  # imported on use: keeps `fit` startup lean

    connectivity_main(argv)


EXTRA_SUBCOMMANDS["report"] = (_report_main, "mean ± std over seeds of results.json files below PATH..., as the paper's tables")
EXTRA_SUBCOMMANDS["study"] = (_study_main, "run a grid of methods × seeds (fit + test), resumable, then print the report")
EXTRA_SUBCOMMANDS["connectivity"] = (_connectivity_main, "loss and error along straight lines between a run's members, and their barriers")


def _print_usage() -> None:
    print(f"ensemble-lab {__version__}: train and evaluate ensembles\n")
    print("usage: ensemble-lab {fit,validate,test,predict" + "".join(f",{n}" for n in EXTRA_SUBCOMMANDS) + "} ...")
    print("       ensemble-lab --version\n")
    print("  fit, validate, test, predict   LightningCLI subcommands; see `ensemble-lab fit --help`")
    for name, (_, help_text) in EXTRA_SUBCOMMANDS.items():
        print(f"  {name:<30} {help_text}")


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``ensemble-lab`` and ``python -m ensemble_lab``; ``args`` defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"ensemble-lab {__version__}")
        return
    if not argv or argv[:1] in (["-h"], ["--help"]):
        _print_usage()
        if not argv:
            raise SystemExit(2)
        return
    commands = ["fit", "validate", "test", "predict", *EXTRA_SUBCOMMANDS]
    if not argv[0].startswith("-") and argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], commands, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"ensemble-lab: error: unknown command '{argv[0]}'{hint}; choose from {', '.join(commands)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if argv[0] in EXTRA_SUBCOMMANDS:
            EXTRA_SUBCOMMANDS[argv[0]][0](argv[1:])
        else:
            run_lightning_cli(argv)
    except Exception as error:
        user_error = user_message(error)
        if user_error is None or os.environ.get("ENSEMBLE_LAB_DEBUG"):
            raise
        print(f"ensemble-lab: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


