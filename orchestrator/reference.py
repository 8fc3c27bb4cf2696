"""docs/sweep-file.md, made from the models that validate a sweep file, so it cannot drift:
every key of `SweepFile` and every option of each built-in backend, with its values,
default and meaning. `make docs` writes it; tests/test_reference.py checks it is current.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from whistle_stop.backends.registry import BUILTIN
from whistle_stop.orchestrator.sweep import SweepFile

HEADER = """\
# The sweep file: every key and every backend option

Generated from the validation models (`orchestrator/sweep.py`, `backends/options.py`) by
`make docs`; do not edit. What the keys do, with examples: [sweeps.md](sweeps.md).

A sweep file is YAML; every key is optional but `backends`. Unknown keys and wrong
types are refused before anything runs (strictly: `true` is not 1, `"128"` is not a
number, a string is not a list). The grid is `models × backends × context_sizes ×
generation_lengths × threads` (`models:` or the one `model:`).
"""


def reference() -> str:
    lines = [HEADER, "## Keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in SweepFile.model_fields.items():
        lines.append(f"| `{name}` | {_type(field)} | {_default(field)} | {field.description} |")
    lines += ["", "## Backends", ""]
    lines.append(
        "A backend entry is a name (`- hf`) or a mapping: `name`, an optional `label` (by "
        "default the name and the options that differ from their defaults, "
        "`onnx[quantize=int8]`) and that backend's options below. Plugins installed as "
        "entry points (group `whistle_stop.backends`) add their own."
    )
    for name, entry in BUILTIN.items():
        lines += ["", f"### `{name}`: {entry.summary}", ""]
        if entry.extra:
            lines += [f"Needs the `{entry.extra}` extra: `pip install -e '.[{entry.extra}]'`.", ""]
        lines.append(" ".join((entry.options.__doc__ or "").split()))
        lines += _options(entry.options)
    return "\n".join(lines) + "\n"


def _options(model: type[BaseModel]) -> list[str]:
    if not model.model_fields:
        return ["", "No options."]
    lines = ["", "| option | values | default |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type(field)} | {_default(field)} |")
    return lines


def _type(field: FieldInfo) -> str:
    return _describe(field.annotation)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin in (list, tuple):
        return f"list of {_describe(args[0])}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    names = {str: "text", int: "integer", float: "number", bool: "`true` \\| `false`"}
    if annotation in names:
        return names[annotation]
    if getattr(annotation, "__name__", "") == "BackendChoice":
        return "backend entry (below)"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return (
            "(this machine's CPUs)" if field.default_factory.__name__ == "_default_threads" else "-"
        )
    value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"
