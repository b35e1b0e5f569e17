"""``ensemble-lab study``: read the study, then show it (--status, --dry_run) or run it with the chosen
launcher: ``sequential`` (one after the other in this process), ``local`` (N at a time, each in its own
process) or ``slurm`` (job arrays through submitit). Every launcher skips finished runs, resumes interrupted
ones, starts a student only after its teacher finished, and ends with the same report.
"""

import sys
import time
from collections.abc import Sequence

from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.report.de_table import add_de_equivalents
from ensemble_lab.report.groups import build_report
from ensemble_lab.report.main import report_main, to_markdown, write_report
from ensemble_lab.runs.interrupts import INTERRUPTED, InterruptWatch
from ensemble_lab.study.args import parse_study_args
from ensemble_lab.study.checks import validate
from ensemble_lab.study.launchers import slurm as slurm_launcher
from ensemble_lab.study.launchers.local import local_env, run_local, visible_gpus
from ensemble_lab.study.launchers.sequential import run_sequential
from ensemble_lab.study.records import forget_resolved, refuse_changed
from ensemble_lab.study.spec import Study, load_spec
from ensemble_lab.study.status import print_runs, print_status


def report(study: Study, failed: Sequence[str], seconds: float) -> None:
    """Print the summary and the report of the study's runs, write ``<out>/report.*``; raise if runs failed.

    With a ``report:`` list in the study file, the report is ``ensemble-lab report <results.json>... --out <out> <list>``.
    """
    runs, out = study.runs, study.out
    print(f"\nstudy: {len(runs)} runs in {out}, {len(failed)} failed, {seconds:.1f} s\n")
    # the study's own runs only: not the <run>.prev-N directories --rerun_changed keeps below <out>
    results = [run.run_dir / "results.json" for run in runs if (run.run_dir / "results.json").exists()]
    try:
        if not results:
            raise EnsembleLabError("no run has a results.json")
        if study.report_args:
            report_main([*map(str, results), "--out", str(out), *study.report_args])
        else:
            groups = build_report(results)
            add_de_equivalents(groups)
            print(to_markdown(groups))
            write_report(groups, out)
    except EnsembleLabError as error:
        print(f"study: no report: {error}")
    if failed:
        raise EnsembleLabError(f"{len(failed)} of {len(runs)} runs failed: {'; '.join(failed)}. Run the same command again to retry them.")


def study_main(argv: Sequence[str]) -> None:
    """``ensemble-lab study``: read the study, then show it (--status, --dry_run) or run it with the chosen launcher."""
    options, slurm_cli = parse_study_args(argv)
    forget_resolved()  # config files may have changed since an earlier study in this process
    study = load_spec(options.config, options.out)
    parallel = options.parallel or len(visible_gpus()) or 2
    if options.status:
        print_status(study.runs)
        return
    if options.dry_run:
        validate(study)
        if options.launcher == "slurm":
            slurm_launcher.print_arrays(study, slurm_cli)
        elif options.launcher == "local":
            env = local_env(0, parallel, visible_gpus())
            print(f"local: {parallel} runs at a time, each with OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, GPUs {visible_gpus() or 'none'}")
        print_runs(study.runs)
        return
    start = time.perf_counter()
    with InterruptWatch() as watch:
        try:
            if options.launcher == "slurm":  # before the seconds of parsing every run
                slurm_launcher.require_slurm()
            validate(study)  # a typo in the args: one error now, not one failed run after another
            if not options.rerun_changed:
                refuse_changed(study.runs)
            if options.launcher == "slurm":
                failed = slurm_launcher.run_slurm(study, slurm_cli, watch, wait=not options.no_wait)
                if failed is None:  # submitted, not waited for
                    return
            elif options.launcher == "local":
                failed = run_local(study.runs, parallel, watch)
            else:
                failed = run_sequential(study.runs, watch)
        except KeyboardInterrupt:
            print("\nstudy: interrupted; run the same command again to resume (finished runs are skipped)", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED) from None
    report(study, failed, time.perf_counter() - start)
