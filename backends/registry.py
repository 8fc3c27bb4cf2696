"""Names users write in a sweep file -> where the backend lives.

The implementation is a ``"module:Class"`` string imported only when a job
runs, so `farm --help` and sweep validation never import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from backends import options as opts


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:Class", imported lazily
    options: type[opts.BackendOptions]
    summary: str


REGISTRY: dict[str, BackendEntry] = {
    "hf": BackendEntry("backends.hf:HFBackend", opts.HFOptions, "transformers eager generate()"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def entry(name: str) -> BackendEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known backends: {', '.join(names())}") from None


def load_class(name: str) -> type:
    """Import and return the backend class registered under `name`."""
    module_name, _, class_name = entry(name).target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
