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
    "nanogpt": BackendEntry(
        "backends.nanogpt:NanoGPTBackend", opts.NanoGPTOptions, "our nanoGPT-style module"
    ),
    "onnx": BackendEntry(
        "backends.onnx:OnnxBackend", opts.OnnxOptions, "ONNX Runtime, past key/values fed back"
    ),
    "hf-compile": BackendEntry(
        "backends.hf_compile:HFCompileBackend",
        opts.HFCompileOptions,
        "transformers + torch.compile",
    ),
    "torch-int8": BackendEntry(
        "backends.torch_int8:TorchInt8Backend", opts.TorchInt8Options, "PyTorch dynamic int8"
    ),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def entry(name: str) -> BackendEntry:
    """The registered backend, or a plugin written as ``package.module:Class``.

    A plugin class may carry an ``Options`` pydantic model (a `BackendOptions`
    subclass); it is imported at validation time, so keep its imports light.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        cls = _import(name)
        return BackendEntry(name, getattr(cls, "Options", opts.BackendOptions), "plugin")
    raise KeyError(
        f"unknown backend {name!r}; known backends: {', '.join(names())} "
        "(or a plugin as package.module:Class)"
    )


class MissingDependencyError(ImportError):
    """A backend's optional dependency is not installed; the message says what to install."""


def load_class(name: str) -> type:
    """Import and return the backend class registered under `name`."""
    try:
        return _import(entry(name).target)
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]  # every dependency's module is its pip name
        raise MissingDependencyError(
            f"backend {name!r} needs the package {package!r}, which is not installed "
            f"here: pip install {package}"
        ) from error


def _import(target: str) -> type:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise KeyError(f"cannot import backend {target!r}: {error}") from None
        raise  # the backend's module exists; one of its dependencies is missing
    try:
        return getattr(module, class_name)
    except AttributeError as error:
        raise KeyError(f"cannot import backend {target!r}: {error}") from None
