"""YAML as ensemble-lab reads config and study files: safe, and a key given twice in one mapping is an error.

Plain YAML keeps the last of two equal keys, so a method, an option or a ``model:`` block written twice
would silently lose its first definition.
"""

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # SafeLoader itself refuses keys it cannot hash
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a key given twice in one mapping (a yaml.YAMLError that says which and where)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
