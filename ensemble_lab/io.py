"""Files as ensemble-lab writes and reads them: written atomically, earlier ones kept under the first free
number (``x.prev-N``), and YAML read strictly.

YAML as ensemble-lab reads config and study files is safe, and a key given twice in one mapping is an error:
plain YAML keeps the last of two equal keys, so a method, an option or a ``model:`` block written twice
would silently lose its first definition. Every problem with such a file is one line that names the file,
the line and what is wrong (PyYAML's own message spans several lines, with the text and a caret).
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ensemble_lab.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for colleagues to read too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def first_free_number(taken: Callable[[int], bool]) -> int:
    """The smallest N = 1, 2, ... for which ``taken(N)`` is False (numbered copies: ``x.prev-N``, ``config.test-N.yaml``)."""
    n = 1
    while taken(n):
        n += 1
    return n


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (``line`` and ``first_line`` are 1-based)."""

    def __init__(self, key: Any, line: int, first_line: int, mark: yaml.Mark) -> None:
        """
        Args:
            key: the key given twice.
            line: the line of its second appearance.
            first_line: the line of its first appearance.
            mark: where the second one is (PyYAML's position).
        """
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(None, None, f"{key!r} is given twice in one mapping (line {line}); the first is on line {first_line}: keep one", mark)


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}  # key -> the 1-based line it first appeared on
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # SafeLoader itself refuses keys it cannot hash
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a key given twice in one mapping (a DuplicateKeyError, a yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def yaml_error_line(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: "line L, column C: what" (a key given twice: "what" names both lines)."""
    if isinstance(error, DuplicateKeyError):
        return str(error.problem)
    mark = getattr(error, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}{what}" + (f" ({context})" if context else "")


def load_yaml_file(path: str | Path, what: str) -> Any:
    """The content of the YAML file ``path`` (read by :func:`load_yaml`); ConfigError with one line naming the
    file, the line and the problem if it is not valid YAML or gives a key twice.

    Args:
        path: the file, as the user gave it (the message repeats it so).
        what: how the message names it, e.g. "config file" or "study file".
    """
    try:
        return load_yaml(Path(path).expanduser().read_text())
    except DuplicateKeyError as error:
        raise ConfigError(f"{what} {path}: {yaml_error_line(error)}") from None
    except yaml.YAMLError as error:
        detail = yaml_error_line(error)
        raise ConfigError(f"{what} {path} is not valid YAML{' ' if detail.startswith('at line') else ': '}{detail}") from None
