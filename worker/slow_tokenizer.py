"""GPT-2's byte-level BPE in pure Python: the "slow" tokenizer of the `tokenizers` axis.

transformers 5 removed its Python tokenizers, so this is the algorithm of OpenAI's
original encoder.py, over the same vocab.json and merges.txt the Rust tokenizer reads:
same ids, Python speed. It exists to measure what tokenization costs without Rust.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import regex

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace.
PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Each byte -> a printable character, so BPE never sees whitespace or control bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


class SlowBPETokenizer:
    def __init__(self, model_dir: Path) -> None:
        self.encoder: dict[str, int] = json.loads((model_dir / "vocab.json").read_text())
        self.decoder = {index: token for token, index in self.encoder.items()}
        lines = (model_dir / "merges.txt").read_text().splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}

    def bpe(self, word: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair until no known pair is left."""
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, index = [], 0
            while index < len(parts):
                if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                    merged.append(parts[index] + parts[index + 1])
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            parts = merged
        return parts

    def __call__(self, text: str) -> dict[str, list[int]]:
        ids = []
        for piece in PATTERN.findall(text):
            word = "".join(self.byte_encoder[byte] for byte in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(word))
        return {"input_ids": ids}

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[index] for index in ids)
        return bytearray(self.byte_decoder[char] for char in text).decode("utf-8", errors="replace")
