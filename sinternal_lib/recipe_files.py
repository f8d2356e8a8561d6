"""Reading one recipe file strictly: duplicate keys, unknown sections or keys and YAML syntax errors are each
a one-line `RecipeError` with the file, line and column. `config.load_recipe` reads every file (a recipe and
its `base:`) through `read_recipe_file`; values are checked afterwards by `recipe_checks.validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .recipe_checks import RecipeError, _short, build_section, show_path, unknown_key
from .recipe_sections import SECTIONS


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the second would silently win)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if dup:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {key!r}", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_error(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (1-based line and column)."""
    def at(mark: Any) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    mark, cmark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    if problem is None:
        return " ".join(f"invalid YAML: {e}".split())
    if context:
        same = cmark is not None and mark is not None and (cmark.line, cmark.column) == (mark.line, mark.column)
        context = f" ({context}{'' if same else at(cmark).replace(' at', ' started at', 1)})"
    return " ".join(f"invalid YAML{at(mark or cmark)}: {problem}{context or ''}".split())


def read_recipe_file(path: Path) -> dict:
    """A recipe file as {section: {key: value}}, with its structure checked (values are not yet)."""
    shown = show_path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {shown}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as e:
        raise RecipeError(f"{shown}: {yaml_error(e)}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{shown}: not UTF-8 text ({e.reason} at byte {e.start}); a recipe is a YAML file") from None
    except OSError as e:
        raise RecipeError(f"{shown}: cannot read ({e.strerror or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{shown}: the top level must be a mapping of sections ({', '.join(SECTIONS)}"
                          f" and an optional base:), got {type(data).__name__} {_short(data)}")
    for name, values in data.items():
        if name == "base":
            if not isinstance(values, str) or not values.strip():
                raise RecipeError(f"{shown}: base must be a recipe name or path (a string), got {values!r}")
            continue
        if name not in SECTIONS:
            raise RecipeError(f"{shown}: {unknown_key(name, [*SECTIONS, 'base'])}")
        if values is not None and not isinstance(values, dict):
            raise RecipeError(f"{shown}: section {name!r} must be a mapping of keys (key: value), "
                              f"got {type(values).__name__} {_short(values)}")
        build_section(name, values or {}, shown)  # unknown keys
    return data
