"""How two ``ensemble-lab fit`` argument lists differ, in words: ``ensemble-lab study`` compares the
arguments a run was made with (its study_run.json) with those the study file gives it today."""

import shlex
from collections.abc import Sequence

#: fit options that only place a run in its directory; they follow from --out and are not compared
PLACEMENT = ("--trainer.logger", "--checkpoint.dirpath", "--ckpt_path", "--run_name")


def _settings(argv: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """``argv`` as (option, value) pairs (``--k=v`` and ``--k v`` alike; a positional has option None),
    without the options that only place the run in its directory (they follow from --out)."""
    pairs: list[tuple[str | None, str | None]] = []
    tokens = [str(t) for t in argv]
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if not token.startswith("--"):
            pairs.append((None, token))
        elif "=" in token:
            option, value = token.split("=", 1)
            pairs.append((option, value))
        elif k + 1 < len(tokens) and not tokens[k + 1].startswith("--"):
            pairs.append((token, tokens[k + 1]))
            k += 1
        else:
            pairs.append((token, None))
        k += 1
    return [(option, value) for option, value in pairs if option not in PLACEMENT]


def _shown(option: str | None, value: str | None) -> str:
    """One (option, value) pair as written on a command line."""
    return str(value) if option is None else option if value is None else f"{option}={value}"


def describe_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """What differs from fit arguments ``before`` to ``after``, e.g. "--trainer.max_epochs: 3 -> 5"; None if nothing."""
    old, new = _settings(before), _settings(after)
    if old == new:
        return None
    removed, added = [p for p in old if p not in new], [p for p in new if p not in old]
    parts = []
    for option, value in removed:
        replaced = [p for p in added if option is not None and p[0] == option]
        if len(replaced) == 1 and sum(p[0] == option for p in removed) == 1:
            parts.append(f"{option}: {value} -> {replaced[0][1]}")
            added.remove(replaced[0])
        else:
            parts.append(f"dropped {_shown(option, value)}")
    parts += [f"added {_shown(option, value)}" for option, value in added]
    return "; ".join(parts) or f"the same arguments in another order: {shlex.join(_shown(*p) for p in new)}"
