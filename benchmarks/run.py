"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--device cpu|cuda] [--out FILE.json]``.

Prints one table of ratios (each the median over interleaved A/B pairs, with its interquartile
range) and writes them, with every pair's ratio and the settings, as JSON. See benchmarks/README.md.
"""

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightning
import torch

from benchmarks import epochs, pipeline, steps, tabular, transformers
from benchmarks.settings import MODES, Settings, Sizes
from benchmarks.timing import Figure, format_table

#: figure groups in the order they run; the letters are those of issue 5
GROUPS = {
    "a": steps.layers,
    "b": steps.batch_ensemble_steps,
    "c": steps.deep_ensemble_steps,
    "d": steps.mc_dropout_samples,
    "e": pipeline.training_epoch,
    "f": pipeline.evaluation,
    "g": pipeline.data_pipeline,
    "h": steps.batch_ensemble_variants,
    "i": steps.efficient_methods,
    "j": epochs.training_epochs,
    "k": steps.packed_stem,
    "l": transformers.vit_steps,
    "m": tabular.tabular_steps,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes (ResNet-18 width 16, 32×32): under 3 minutes on 2 CPU cores")
    size.add_argument("--micro", action="store_true", help="tiny sizes and 2 pairs: seconds; for tests only, the figures mean nothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"], help="bf16-mixed autocasts every step, as the trainer option does")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs (the model option channels_last)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks of the training-epoch figures (j)")
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help="the methods of figure (j), names of configs/cifar10/<name>.yaml (default: all of them)")
    parser.add_argument("--only", default="".join(GROUPS), help="run only these figure groups, e.g. --only be")
    parser.add_argument("--pairs", type=int, default=None, help="override the number of interleaved pairs per figure")
    parser.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                        help="override one size of the mode, e.g. --size width=64 --size batch=8 (see benchmarks/settings.py)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1; 0 = torch's choice). On a machine shared with other jobs, more "
                             "threads than free cores makes every parallel op wait for a descheduled thread (100x slower, seen here)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args(argv)


@contextlib.contextmanager
def quiet_lightning(threads: int) -> Iterator[None]:
    """The suite prints one table: Lightning's per-run info lines and advice would bury it.
    Sets torch's CPU threads; everything is put back afterwards (the tests call ``main``)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels, old_threads = [lg.level for lg in loggers], torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def parse_size(sizes: Sizes, setting: str) -> tuple[str, object]:
    """"width=64" -> ("width", 64), typed like the field it replaces."""
    key, _, value = setting.partition("=")
    if key not in sizes.__dataclass_fields__:
        raise SystemExit(f"--size {setting}: unknown size {key!r}; known: {', '.join(sizes.__dataclass_fields__)}")
    kind = type(getattr(sizes, key))
    return key, value.lower() in ("1", "true", "yes") if kind is bool else kind(value)


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parse_args(argv)
    mode = "micro" if args.micro else "quick" if args.quick else "full"
    sizes = replace(MODES[mode], **dict(parse_size(MODES[mode], kv) for kv in args.size))
    methods = epochs.METHODS if args.methods is None else tuple(args.methods.split(","))
    unknown = sorted(set(methods) - set(epochs.METHODS))
    if unknown:
        raise SystemExit(f"--methods {args.methods}: unknown {', '.join(unknown)}; known: {', '.join(epochs.METHODS)}")
    settings = Settings(sizes, torch.device(args.device), args.precision, args.channels_last, args.compile, methods).with_pairs(args.pairs)
    torch.manual_seed(0)
    started = time.perf_counter()
    figures: list[Figure] = []
    with quiet_lightning(args.threads):
        threads = torch.get_num_threads()
        for letter in args.only:
            group_start = time.perf_counter()
            figures += GROUPS[letter](settings)
            print(f"  ({letter}) done in {time.perf_counter() - group_start:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    device = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nensemble-lab benchmarks: mode={mode} device={settings.device} ({device}) precision={settings.precision} "
          f"channels_last={settings.channels_last} compile={settings.compile} threads={threads} torch={torch.__version__} ({elapsed:.0f} s)")
    print("Each figure: median of A/B over interleaved pairs [interquartile range]; times are medians per call.\n")
    print(format_table(figures))
    for f in figures:
        if f.note:
            print(f"  {f.name}: {f.note}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "mode": mode, "device": str(settings.device), "device_name": device, "precision": settings.precision,
            "channels_last": settings.channels_last, "compile": settings.compile, "threads": threads, "torch": torch.__version__,
            "lightning": lightning.__version__, "python": platform.python_version(), "seconds": elapsed,
            "sizes": settings.sizes.__dict__, "figures": [f.as_dict() for f in figures],
        }
        args.out.write_text(json.dumps(document, indent=2))
        print(f"\nwritten: {args.out}")
    return figures


if __name__ == "__main__":
    main()
