"""GPT-2s trained here on real text, so fidelity is measured on weights with real structure.

Seeded random weights cost the same to run but their logits are nearly flat, and they
have none of the outlier channels training creates, which are what quantisation fails on.
Hub checkpoints are out of reach offline; a corpus from a package registry and a byte-level
BPE trained on it are not. The model is transformers' GPT-2 exactly (its config and model
class, gelu_new, tied head), so every backend and engine runs it unchanged.

The training is plain PyTorch as nanoGPT does it: AdamW (weight decay on matrices only),
linear warm-up then a cosine to a tenth of the peak rate, gradient clipping, and the
held-out works scored at the end. Same recipe, seed and corpus give the same model up to
the float rounding of the host's kernels (the thread count changes reduction order).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from whistle_stop.backends import corpus as corpora

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes a trained model besides the seed and the corpus."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int  # of the byte-level BPE trained on the corpus
    block: int  # training context; also the model's n_positions
    steps: int
    batch: int
    lr: float
    warmup: int
    characters: int | None = None  # train on the first this many characters (None: all)
    eval_blocks: int = 64  # held-out blocks scored for the perplexity


RECIPES: dict[str, Recipe] = {
    # 9M parameters, 1.2M tokens seen (about one pass over 4.6 MB of plays): 14 minutes on
    # a 2-core Zen 4, 2.8 s a step (6 x 384 wide would have seen a third of the tokens)
    "gpt2-shakespeare": Recipe(6, 4, 256, 16384, 256, 300, 16, 1.5e-3, 30),
    # the same model, tokenizer and held-out text with its seeded initial weights: what
    # fidelity looks like on random weights, at the same positions of the same text
    "gpt2-shakespeare-untrained": Recipe(6, 4, 256, 16384, 256, 0, 16, 1.5e-3, 30),
    # seconds to build, for the tests: a real tokenizer and real text, a barely trained model
    "tiny-shakespeare": Recipe(
        2, 2, 64, 512, 64, 40, 8, 3e-3, 5, characters=200_000, eval_blocks=8
    ),
}


def build(name: str, seed: int, cache_dir: Path, out: Path, progress: Callable | None = None):
    """Train `name`'s recipe and write a `save_pretrained` directory to `out`: config,
    safetensors, tokenizer, the held-out text (`heldout.txt`) and `training.json`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    recipe, started = RECIPES[name], time.perf_counter()
    corpus = corpora.load(cache_dir)
    if recipe.characters:
        corpus = corpus.subset(recipe.characters)
    tokenizer = _train_tokenizer(corpus.train, recipe.vocab_size, out)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    train = _ids(tokenizer, corpus.train, eos)
    held_out = _ids(tokenizer, corpus.held_out, eos)
    (out / "heldout.txt").write_text(f"\n\n{EOS}".join(corpus.held_out))

    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # a build uses the whole machine
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        n_embd=recipe.n_embd,
        vocab_size=len(tokenizer),
        n_positions=recipe.block,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,  # about one pass over the text: nothing to regularise yet
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    try:
        losses = _train(model, train, recipe, seed, progress)
        perplexity = math.exp(_held_out_loss(model, held_out, recipe))
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(out, safe_serialization=True)
    report = {
        "name": name,
        "recipe": asdict(recipe),
        "seed": seed,
        "corpus": f"{corpora.PACKAGE}=={corpora.VERSION}",
        "corpus_sha256": corpus.digest,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train),
        "held_out_tokens": len(held_out),
        "tokens_seen": recipe.steps * recipe.batch * recipe.block,
        "train_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "held_out_perplexity": perplexity,
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def key(name: str, seed: int) -> str:
    """What the cached model's directory name hashes: recipe, seed and corpus digest."""
    import hashlib

    parts = [asdict(RECIPES[name]), seed, corpora.SHA256]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """GPT-2's byte-level BPE, trained on the corpus, saved as a GPT-2 fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    bpe.save_model(str(out))  # vocab.json and merges.txt, as GPT-2 ships them
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,  # the trained pipeline itself, not a re-read of it
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
    )
    tokenizer.save_pretrained(out)
    return tokenizer


def _ids(tokenizer, texts: list[str], eos: int):
    import torch

    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [eos]
    return torch.tensor(ids, dtype=torch.long)


def _train(model, ids, recipe: Recipe, seed: int, progress: Callable | None) -> list[float]:
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )

    def rate(step: int) -> float:  # a multiple of the peak rate
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        done = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    sampler = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(recipe.steps):
        starts = torch.randint(len(ids) - recipe.block - 1, (recipe.batch,), generator=sampler)
        batch = torch.stack([ids[s : s + recipe.block] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, recipe.steps, loss.item())
    return losses


def _held_out_loss(model, ids, recipe: Recipe) -> float:
    """Mean next-token loss over `eval_blocks` blocks spread evenly over the held-out works."""
    import torch

    model.eval()
    blocks = min(recipe.eval_blocks, (len(ids) - 1) // recipe.block)
    spacing = (len(ids) - 1) // blocks
    total = 0.0
    with torch.no_grad():
        for b in range(blocks):
            chunk = ids[b * spacing : b * spacing + recipe.block].unsqueeze(0)
            total += model(input_ids=chunk, labels=chunk).loss.item()
    return total / blocks
