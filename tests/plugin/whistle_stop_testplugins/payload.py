"""A would-be payload: importable, NOT registered as a backend. If anything ever imports
this module or calls its class, the marker file appears; the trust tests look for it."""

from __future__ import annotations

import os
from pathlib import Path


def _touch() -> None:
    marker = os.environ.get("WHISTLE_STOP_PAYLOAD_MARKER")
    if marker:
        Path(marker).write_text("a sweep file or a queue message ran code")


_touch()  # on import: importing is already too much


class Touch:
    def __init__(self, *args, **kwargs) -> None:
        _touch()

    def generate(self, *args, **kwargs) -> None:
        _touch()
