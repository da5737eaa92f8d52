"""Load the YAML files users write, keeping the line of every key.

labgrid only warns on a typo and PyYAML forgets where a value came from; a lab
engineer wants "boards/x.yaml:7: expect.boot_el: must be one of EL1, EL2".  So
mappings come back as :class:`LinedDict` (a dict that also knows the line of each
key) and :func:`check_fields` validates them against a small declarative schema,
collecting every problem before raising one :class:`ConfigError`.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ConfigError


class LinedDict(dict):
    """A dict that remembers the 1-based line of each key and of itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines = {}

    def line_of(self, key):
        return self.key_lines.get(key, self.line)


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader that builds LinedDicts and rejects duplicate keys.

    On libyaml's parser where PyYAML has it (the wheels do): the same nodes and marks,
    a third of the time (the run's board, image set and environment files are parsed
    before the board powers on)."""


def _construct_mapping(loader, node):
    mapping = LinedDict()
    mapping.line = node.start_mark.line + 1
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {mapping.key_lines[key]})",
                key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path):
    """Parse ``path`` into LinedDicts; a syntax error becomes ConfigError with file:line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [f"{path}: file not found"]) from None
    except OSError as err:
        raise ConfigError(path, [f"{path}: cannot read: {err.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(path, [f"{path}{line}: malformed YAML: {err.problem or err.context}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(path, [f"{path}: malformed YAML: {err}"]) from None
    if not isinstance(data, LinedDict):
        raise ConfigError(path, [f"{path}:1: expected a mapping at the top level, got {type(data).__name__}"])
    return data


@dataclass(frozen=True)
class Field:
    """One key of a schema: its type(s), whether it is required, allowed values, nested schema."""

    types: tuple
    required: bool = False
    choices: tuple = ()
    schema: dict = None
    default: object = None


def check_fields(path, data, schema, prefix="", problems=None):
    """Validate ``data`` (a LinedDict) against ``schema`` ({key: Field}).

    Returns the list of problems (each "file:line: field: what is wrong");
    unknown keys are problems too, since a typo must not pass silently.
    """
    problems = [] if problems is None else problems
    for key in data:
        if key not in schema:
            known = ", ".join(sorted(schema))
            problems.append(f"{path}:{data.line_of(key)}: {prefix}{key}: unknown field (known: {known})")
    for key, field in schema.items():
        where = f"{path}:{data.line_of(key)}: {prefix}{key}"
        if key not in data:
            if field.required:
                problems.append(f"{path}:{data.line}: {prefix}{key}: required field missing")
            continue
        value = data[key]
        if not isinstance(value, field.types) or (isinstance(value, bool) and bool not in field.types):
            names = " or ".join(t.__name__ for t in field.types)
            problems.append(f"{where}: must be {names}, got {type(value).__name__} {value!r}")
            continue
        if field.choices and value not in field.choices:
            allowed = ", ".join(str(c) for c in field.choices)
            problems.append(f"{where}: must be one of {allowed} (got {value!r})")
        if field.schema is not None and isinstance(value, LinedDict):
            check_fields(path, value, field.schema, prefix=f"{prefix}{key}.", problems=problems)
    return problems


def raise_if_problems(path, problems):
    if problems:
        raise ConfigError(path, problems)
