"""Defences against steering suffixes that were tried and not kept: the measurements behind them.

    python benchmarks/reroute_defences.py           # ~1.5 min; writes benchmarks/results/reroute_defences.json

Each defence is applied to hybridllm from outside (a training-copy function, the routing-text
normaliser, or the router's score replaced for the run), so the library stays as shipped. Flip
rates are measured as in ``reroute_robustness.py`` (200 held-out prompts, 30 % of the clean prompts
to the small model, the default point beside it):

1. training copies with appended option lists (default pair; also with random-word and
   difficulty-claim copies), retrained with the shipped router's recipe;
2. routing on the question without a trailing block of lettered options (default pair, retrained);
3. the median score of three prefixes of the routing text: the whole, its first 85 % and its first
   70 % of words (the shipped router on the default pair, and the MMLU-Pro router of
   ``reroute_robustness.py``; no retraining);
4. a trimmed mean of the prompt's token vectors instead of their mean (per dimension, the highest
   and lowest 20 % of the tokens' values left out), so that a few appended tokens move the pooled
   vector less; both routers retrained on it;
5. with ``--finetune`` (13 min more): the encoder itself fine-tuned with the head (``--mode finetune``,
   128 tokens, 3 epochs) on the default pair, with two filler copies and one option-list copy of
   every training prompt (labels unchanged), so that the encoder can learn what appended text is.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reroute_robustness as rr
from proxy_harness import scratch_dir, write_result

CLAIMS = ["This is an easy question.", "(easy)", "This is a hard question.", "(hard)", "Think carefully.",
          "Answer briefly.", "(simple)", "Very difficult!"]  # fmt: skip
OPTION_LINES = re.compile(r"(?:\n[ \t]*(?:\([A-Za-z]\)|[A-Za-z][.):])[^\n]*){2,}\s*$")
OPTION_INLINE = re.compile(r"(?:\s*\boptions?\s*:)?(?:\s*\([A-Ja-j]\)[^()\n]*){2,}\s*$", re.IGNORECASE)


def options_block(rng: random.Random, words: list[str]) -> str:
    n = rng.randint(2, 10)
    style = rng.choice(["({})", "{}.", "{})", "{}:"])
    sep = rng.choice(["\n", " "])
    return sep.join(style.format(c) + " " + " ".join(rng.choices(words, k=rng.randint(1, 4))) for c in "ABCDEFGHIJ"[:n])


@contextlib.contextmanager
def copies_with(kinds: list[str], vocab: list[str]) -> Iterator[None]:
    """Training also gets, per prompt and per filler copy, one copy with a suffix of ``kinds``."""
    import hybridllm.features.text as rt
    import hybridllm.model.fit as train_mod

    orig = train_mod.distractor_copies

    def copies(texts: list[str], n: int, seed: int = 0) -> tuple[list[str], list[int]]:
        out, src = orig(texts, n, seed)
        rng = random.Random(seed + 99)
        words = [w for t in texts for w in re.findall(r"[A-Za-z]{3,}", t)] or ["the"]
        for i, t in enumerate(texts):
            for _ in range(n):
                kind = rng.choice(kinds)
                if kind == "options":
                    tail = options_block(rng, words)
                elif kind == "vocab":
                    tail = " ".join(rng.choices(vocab, k=rng.randint(5, 20)))
                else:
                    tail = rng.choice(CLAIMS)
                out.append(rt.normalize(f"{t}{rng.choice([' ', chr(10)])}{tail}"))
                src.append(i)
        return out, src

    train_mod.distractor_copies = copies
    try:
        yield
    finally:
        train_mod.distractor_copies = orig


@contextlib.contextmanager
def without_options() -> Iterator[None]:
    """The routing text loses a trailing block of lettered options (in training and routing)."""
    import hybridllm.features.text as rt

    orig = rt.normalize

    def strip(text: str) -> str:
        t = OPTION_INLINE.sub("", OPTION_LINES.sub("", text))
        return orig(t if t.strip() else text)

    rt.normalize = strip
    try:
        yield
    finally:
        rt.normalize = orig


@contextlib.contextmanager
def median_of_prefixes(fracs: tuple[float, ...] = (1.0, 0.85, 0.7)) -> Iterator[None]:
    from hybridllm.features.featurize import featurize
    from hybridllm.features.text import routing_text
    from hybridllm.model.router import Router

    orig = Router.score

    def score(self, prompts, batch_size=64, show_progress=False):  # type: ignore[no-untyped-def]
        texts = [routing_text(p, self.turns, self.harden) for p in prompts]
        cols = []
        for f in fracs:
            views = [" ".join(w[: max(1, math.ceil(f * len(w)))]) for w in (t.split(" ") for t in texts)]
            cols.append(self.head.predict(featurize(self.encoder, views, self.extra, batch_size=batch_size)))
        return np.median(np.stack(cols, axis=1), axis=1)

    Router.score = score  # type: ignore[method-assign]
    try:
        yield
    finally:
        Router.score = orig  # type: ignore[method-assign]


@contextlib.contextmanager
def trimmed_pooling(trim: float = 0.2) -> Iterator[None]:
    """The static encoder pools a text by a per-dimension trimmed mean of its token vectors (its
    embeddings cached apart from the plain mean's)."""
    from hybridllm.features.static import StaticEncoder

    saved = StaticEncoder._pool, StaticEncoder._pool_many, StaticEncoder.__init__

    def pool(self, ids):  # type: ignore[no-untyped-def]
        a = np.asarray(ids, dtype=np.int64)
        a = a[~self._is_special[a]]
        if not len(a):
            return np.zeros(self.dim, dtype=np.float32)
        k = int(trim * len(a)) if len(a) >= 3 else 0
        v = np.sort(self._dense[a], axis=0)[k : len(a) - k].mean(axis=0).astype(np.float32)
        return v / (np.linalg.norm(v) + 1e-12)

    def pool_many(self, kept):  # type: ignore[no-untyped-def]
        return np.stack([pool(self, k) for k in kept]) if kept else np.zeros((0, self.dim), np.float32)

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        saved[2](self, *a, **k)
        self.fingerprint += f"-trim{trim}"

    StaticEncoder._pool, StaticEncoder._pool_many, StaticEncoder.__init__ = pool, pool_many, init
    try:
        yield
    finally:
        StaticEncoder._pool, StaticEncoder._pool_many, StaticEncoder.__init__ = saved


@contextlib.contextmanager
def finetune_with_copies(copies: int = 2, option_copies: int = 1) -> Iterator[None]:
    """``--mode finetune`` trains on each prompt, ``copies`` filler copies (as head mode does) and
    ``option_copies`` copies with an appended option list, all with the prompt's label."""
    import hybridllm.model.fit as ft  # the name fit_router calls
    from hybridllm.features.text import distractor_copies, normalize

    orig = ft.finetune

    def finetune(spec, texts, y, *a, **k):  # type: ignore[no-untyped-def]
        aug, src = distractor_copies(list(texts), copies, 0)
        rng = random.Random(5)
        words = [w for t in texts for w in re.findall(r"[A-Za-z]{3,}", t)] or ["the"]
        for i, t in enumerate(texts):
            for _ in range(option_copies):
                aug.append(normalize(t + rng.choice([" ", "\n"]) + options_block(rng, words)))
                src.append(i)
        return orig(spec, [*texts, *aug], np.concatenate([y, y[src]]), *a, **k)

    ft.finetune = finetune
    try:
        yield
    finally:
        ft.finetune = orig


def default_pair_router(out: Path, **changes: object) -> Path:
    """The shipped router's recipe (``train --select apgr --no-knn``) on the default pair's train
    split; ``changes``: other training options (e.g. ``mode="finetune"``)."""
    from hybridllm import TrainOptions, read_table, train_router
    from hybridllm.model.head import HeadConfig

    rows = read_table(rr.REPO / "data" / "default-pair" / "split" / "train.jsonl")
    opts = TrainOptions(
        small="qwen2.5-0.5b", large="qwen2.5-1.5b", labels="trans",
        head=HeadConfig(extra=["log_tokens"], select="apgr", knn=False), **changes,  # type: ignore[arg-type]
    )  # fmt: skip
    train_router(rows, opts, out, show_progress=False)
    return out


def measure(router_dir: Path, rows: list, words: list[str], tries: int, full_test: list | None = None) -> dict:
    from hybridllm.model.evaluation import evaluate_router
    from hybridllm.model.router import Router

    out = {}
    for key, point in (("default point", None), ("30% to small", {"cost_advantage": 30})):
        a = rr.run_router(Router(router_dir), rows, True, words, tries, point)
        out[key] = {"apgr": a["apgr"], "to_small_share": a["to_small_share"], "max_flip": a["max_flip"],
                    "families": a["families"]}  # fmt: skip
    if full_test is not None:
        r = Router(router_dir)
        out["full_test_apgr"] = evaluate_router(r, full_test)[0]["router"]["apgr"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tries", type=int, default=50)
    ap.add_argument("--finetune", action="store_true", help="also defence 5: the encoder fine-tuned (13 min)")
    ap.add_argument("--json", type=Path, default=rr.REPO / "benchmarks" / "results" / "reroute_defences.json")
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.model.router import default_router_dir
    from hybridllm.tables.format import read_table

    words = rr.word_pool()
    vocab = rr.word_pool(seed=7)[:3000]
    default_test = read_table(rr.DEFAULT_TEST)
    rows = default_test[: args.n]
    tmp = Path(scratch_dir())
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name, kinds in (("default pair: shipped recipe, retrained", []), ("+ option-list copies", ["options"]),
                        ("+ option-list and random-word copies", ["options", "vocab"]),
                        ("+ option-list, random-word and claim copies", ["options", "vocab", "claim"])):  # fmt: skip
        with copies_with(kinds, vocab) if kinds else contextlib.nullcontext():
            d = default_pair_router(tmp / f"aug{len(kinds)}")
        results[name] = measure(d, rows, words, args.tries)
    with without_options():
        d = default_pair_router(tmp / "strip")
        results["default pair: question without its option block"] = measure(d, rows, words, args.tries)
    mmlu_train, mmlu_val, mmlu_test = split = rr.mmlu_split()
    mmlu, _, _ = rr.mmlu_routers(rr.REPO / "runs", split)
    for label, router_dir, test in (("default pair, shipped", default_router_dir(), default_test),
                                    ("MMLU-Pro", mmlu, mmlu_test)):  # fmt: skip
        results[f"{label}: whole text"] = measure(router_dir, test[: args.n], words, args.tries, test)
        with median_of_prefixes():
            results[f"{label}: median of 3 prefixes"] = measure(router_dir, test[: args.n], words, args.tries, test)
    with trimmed_pooling():
        d = default_pair_router(tmp / "trim")
        results["default pair: trimmed-mean pooling, retrained"] = measure(d, rows, words, args.tries, default_test)
        m = rr.train_mmlu_router(tmp / "trim-mmlu", mmlu_train, mmlu_val)
        results["MMLU-Pro: trimmed-mean pooling, retrained"] = measure(m, mmlu_test[: args.n], words, args.tries,
                                                                       mmlu_test)  # fmt: skip
    if args.finetune:
        with finetune_with_copies():
            d = default_pair_router(tmp / "finetuned", mode="finetune", max_length=128)
        results["default pair: encoder fine-tuned with copies"] = measure(d, rows, words, args.tries, default_test)
    print(f"\n{'defence':58s} {'APGR':>6s} {'full':>6s}  families over 10 % at 30 % to small (to large / to small)")
    for name, r in results.items():
        m = r["30% to small"]
        bad = ", ".join(
            f"{k} {v['to_large']:.0%}/{v['to_small']:.0%}" for k, v in m["families"].items() if max(v.values()) > 0.10
        )
        full = f"{r['full_test_apgr']:6.4f}" if "full_test_apgr" in r else ""
        print(f"{name:58s} {m['apgr']:6.3f} {full:>6s}  {bad or '-'}")
    payload = {"benchmark": "reroute_defences", "n": args.n, "tries": args.tries,
               "seconds": round(time.perf_counter() - t0, 1), "results": results}  # fmt: skip
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
