"""Backend names -> backend classes: an allowlist defined by this installation.

A sweep file (or a queue message) names a backend; it never names a module. The
names are the built-in backends below plus backends installed as Python entry points
in the group `whistle_stop.backends` (the packaging convention pytest uses for its
plugins), so what can run is decided by what is installed, not by what a file says.
Implementations are imported only when a job runs, so `farm --help` and sweep
validation never import torch.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata

from whistle_stop.backends import options as opts

ENTRY_POINT_GROUP = "whistle_stop.backends"


class UnknownBackendError(KeyError):
    """A backend name this installation does not have. str() is the message."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingDependencyError(ImportError):
    """A backend's optional dependency is not installed; the message says what to install."""


class NotABackendError(TypeError):
    """What a name resolved to is not a backend class."""


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:Class", from this file or from installed package metadata
    options: type[opts.BackendOptions]
    summary: str
    extra: str | None = None  # the pip extra that installs its dependencies


BUILTIN: dict[str, BackendEntry] = {
    "hf": BackendEntry(
        "whistle_stop.backends.hf:HFBackend", opts.HFOptions, "transformers eager generate()"
    ),
    "nanogpt": BackendEntry(
        "whistle_stop.backends.nanogpt:NanoGPTBackend",
        opts.NanoGPTOptions,
        "our nanoGPT-style module",
    ),
    "onnx": BackendEntry(
        "whistle_stop.backends.onnx:OnnxBackend",
        opts.OnnxOptions,
        "ONNX Runtime, past key/values fed back",
    ),
    "hf-compile": BackendEntry(
        "whistle_stop.backends.hf_compile:HFCompileBackend",
        opts.HFCompileOptions,
        "transformers + torch.compile",
    ),
    "native": BackendEntry(
        "whistle_stop.backends.native:NativeBackend",
        opts.NativeOptions,
        "our own engine: block-quantized weights, one call a token",
    ),
    "torch-int8": BackendEntry(
        "whistle_stop.backends.torch_int8:TorchInt8Backend",
        opts.TorchInt8Options,
        "PyTorch dynamic int8",
    ),
    "calibration": BackendEntry(
        "whistle_stop.backends.calibration:CalibrationBackend",
        opts.CalibrationOptions,
        "a step of known cost (memory read): calibrates the verdicts",
    ),
    # the engines a user would pick instead: optional, each behind its own extra
    "ctranslate2": BackendEntry(
        "whistle_stop.backends.ct2:CTranslate2Backend",
        opts.CTranslate2Options,
        "CTranslate2's Generator",
        extra="ctranslate2",
    ),
    "llama-cpp": BackendEntry(
        "whistle_stop.backends.llamacpp:LlamaCppBackend",
        opts.LlamaCppOptions,
        "llama.cpp on a GGUF file",
        extra="llama-cpp",
    ),
    "openvino": BackendEntry(
        "whistle_stop.backends.openvino:OpenVINOBackend",
        opts.OpenVINOOptions,
        "OpenVINO (GenAI's LLMPipeline or a Python loop)",
        extra="openvino",
    ),
}


@functools.cache  # what is installed does not change while a process runs
def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every backend name this installation can run."""
    return sorted(set(BUILTIN) | set(_plugins()))


def entry(name: str) -> BackendEntry:
    """The backend registered under `name`. Raises `UnknownBackendError` listing the known.

    A plugin's options model is its class's ``Options`` attribute (a `BackendOptions`
    subclass); reading it imports the plugin's module, so keep that module's imports light.
    """
    if not isinstance(name, str):
        raise UnknownBackendError(f"a backend is named by a string, not {type(name).__name__}")
    if name in BUILTIN:
        return BUILTIN[name]
    plugin = _plugins().get(name)
    if plugin is None:
        hint = ""
        if ":" in name or "." in name:
            hint = (
                " (backends are named, never given as module paths; install a backend "
                f"of your own as an entry point in the group {ENTRY_POINT_GROUP!r})"
            )
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {', '.join(names())}{hint}"
        )
    cls = _checked_class(name, plugin.value)
    options = getattr(cls, "Options", opts.BackendOptions)
    if not (isinstance(options, type) and issubclass(options, opts.BackendOptions)):
        raise NotABackendError(f"backend {name!r}: its Options is not a BackendOptions model")
    return BackendEntry(plugin.value, options, f"plugin from {plugin.value}")


def load_class(name: str) -> type:
    """Import and return the backend class registered under `name`, checked to be one."""
    found = entry(name)
    return _checked_class(name, found.target, found.extra)


def check_extra(name: str) -> None:
    """For a backend behind an extra: raise `MissingDependencyError` (one line naming the
    extra) if it cannot load here. The built-in paths are not imported (torch is slow)."""
    if entry(name).extra:
        load_class(name)


def _checked_class(name: str, target: str, extra: str | None = None) -> type:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]  # every dependency's module is its pip name
        if extra:
            raise MissingDependencyError(
                f"backend {name!r} needs the {extra!r} extra, not installed here: "
                f"pip install -e '.[{extra}]' (in whistle-stop's checkout)"
            ) from error
        raise MissingDependencyError(
            f"backend {name!r} needs the package {package!r}, which is not installed "
            f"here: pip install {package}"
        ) from error
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not callable(getattr(cls, "generate", None)):
        raise NotABackendError(
            f"backend {name!r} resolves to {target}, which is not a backend class "
            "(a class with a generate() method)"
        )
    return cls


def create(name: str, model_dir, options: dict, threads: int, cache_dir):
    """The backend `name`, built with `options` validated by its own model (defaults applied)."""
    validated = entry(name).options.model_validate(options)
    return load_class(name)(model_dir, validated, threads, cache_dir)
