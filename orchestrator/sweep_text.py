"""Reading a sweep file safely: bounded size, UTF-8 text, plain YAML data.

A sweep file may come from anyone. Before pydantic sees it, it must be at most 1 MiB
of UTF-8 text, parse as YAML with the safe loader (no Python tags: `!!python/...` is
refused, never constructed), and its anchors and aliases must not expand past a
bound (a "billion laughs" file is a few lines that expand to billions of values).
Every refusal is one line naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: the largest real sweep file is a few KiB
MAX_VALUES = 100_000  # scalars, lists and mappings after expanding every alias


class SweepTextError(ValueError):
    """The file cannot be read as a sweep file; the message is one line."""


def read_text(path: Path) -> str:
    """The file's text, or `SweepTextError` if it is missing, too big, binary or not UTF-8."""
    try:
        if path.is_dir():
            raise SweepTextError(f"{path}: is a directory; pass the path of a sweep YAML file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SweepTextError(
                f"{path}: {size:,} bytes; a sweep file is at most {MAX_BYTES:,} (1 MiB)"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SweepTextError(f"{path}: no such file; pass the path of a sweep YAML file") from None
    except OSError as error:
        raise SweepTextError(f"{path}: cannot read it ({error.strerror})") from None
    if b"\0" in raw:
        raise SweepTextError(f"{path}: a binary file, not YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SweepTextError(
            f"{path}: not UTF-8 text (byte {error.start} is 0x{raw[error.start]:02x}); "
            "save it as UTF-8"
        ) from None


def parse_yaml(text: str, origin: str) -> Any:
    """Plain data from YAML text, or `SweepTextError` in one line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise SweepTextError(
                f"{origin}: its anchors and aliases expand to more than {MAX_VALUES:,} values; "
                "write the grid out instead"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SweepTextError(f"{origin}: invalid YAML: {_one_line(error)}") from None
    except RecursionError:
        raise SweepTextError(f"{origin}: nested too deeply to be a sweep file") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, float]) -> float:
    """Values the node stands for once aliases are expanded (shared nodes counted each time
    they are referred to), memoised so a bomb is measured without being expanded."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = float("inf")  # a node that refers to itself expands forever
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[key] = size
    return size


def _one_line(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = error.problem or error.context or "malformed"
        return " ".join(f"{what}{where}".split())
    return " ".join(str(error).split())
