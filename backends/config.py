"""A GPT-2 model directory's config.json, read in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ModelConfigError(ValueError):
    """A config.json that is missing, unreadable, or lacks a GPT-2 size."""


@dataclass(frozen=True)
class ModelConfig:
    """The sizes every backend and figure needs, plus the whole dict for loaders."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dir(cls, directory: Path) -> ModelConfig:
        path = Path(directory) / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelConfigError(
                f"model directory {str(directory)!r} has no config.json; "
                "write one with model.save_pretrained(DIR)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelConfigError(f"{path}: not a readable JSON config ({error})") from None
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise ModelConfigError(f"{origin}: expected a JSON object")
        positions = data.get("n_positions") or data.get("max_position_embeddings") or 0
        try:
            sizes = {
                name: int(data[name]) for name in ("n_layer", "n_head", "n_embd", "vocab_size")
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ModelConfigError(f"{origin}: not a GPT-2 config (no usable {error})") from None
        if int(positions) <= 0:
            raise ModelConfigError(f"{origin} does not say its maximum positions (n_positions)")
        return cls(**sizes, n_positions=int(positions), raw=data)
