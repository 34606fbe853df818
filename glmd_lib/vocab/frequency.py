"""Token frequencies of a corpus under a Hugging Face tokenizer (notebook 01).

GLMD prunes the student's vocabulary to the most frequent tokens of the pre-training corpus, so the
first question is how skewed that distribution is. This module counts it; the corpus readers (and
their :class:`~glmd_lib.data.corpus.CorpusError`) are in :mod:`glmd_lib.data.corpus`:

* :func:`count_tokens` tokenizes batches of lines with the *fast* (Rust) tokenizer, which spreads a
  batch over all cores, and adds the ids to a histogram with ``np.bincount``. The tokenizer (which
  releases the GIL) runs in a worker thread while the main thread reads the next batch and counts the
  previous one, so counting costs little more than the tokenizer alone (``benchmarks/bench_frequency.py``).
* :func:`zipf_fit`, :func:`coverage`, :func:`counts_table` / :func:`read_counts` summarise and persist.

Lines are counted without their line break and without special tokens (``add_special_tokens=False``):
a count is how often a token occurs in the text itself.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from glmd_lib.data.corpus import CorpusError, iter_corpus_lines

COVERAGE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768)  # "1k ... 32k" kept tokens


def _batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(lines, size)):
        yield batch


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tokenizer_parallelism(enabled: bool = True) -> Iterator[None]:
    """Let the Rust tokenizer use all cores inside the block (tests set TOKENIZERS_PARALLELISM=false)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _backend(tokenizer: Any):
    """The Rust ``tokenizers.Tokenizer`` behind a transformers tokenizer (or the tokenizer itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None and hasattr(tokenizer, "encode_batch"):
        backend = tokenizer
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with use_fast=True")
    return backend


def count_tokens(source: Any, tokenizer: Any, max_lines: int | None = None, batch_lines: int = 1000,
                 parallel: bool = True, progress: bool = False) -> np.ndarray:
    """Histogram of token ids over a corpus: an int64 array of length ``len(tokenizer)``.

    ``source`` is anything :func:`iter_corpus_lines` accepts. Batches of ``batch_lines`` lines go through
    the fast tokenizer in a worker thread; meanwhile this thread counts the previous batch and reads the
    next one.
    ``parallel``: let the tokenizer use every core (overrides TOKENIZERS_PARALLELISM during the call).
    """
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
    backend = _backend(tokenizer)
    size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True))
    counts = np.zeros(size, dtype=np.int64)
    batches = _batches(iter_corpus_lines(source, max_lines), batch_lines)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit=" lines", desc="counting")
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def add(encodings) -> None:
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        counts[:] += np.bincount(ids, minlength=size)[:size]

    # A three-stage pipeline: while the Rust tokenizer (which releases the GIL) encodes batch i in a
    # worker thread, this thread turns batch i-1 into counts and reads batch i+1. Without it the cores
    # would idle during the Python parts.
    with tokenizer_parallelism(parallel), ThreadPoolExecutor(max_workers=1) as worker:
        previous = None
        for batch in batches:
            current = worker.submit(encode, batch, add_special_tokens=False)
            if previous is not None:
                add(previous.result())
            previous = current
            if bar is not None:
                bar.update(len(batch))
        if previous is not None:
            add(previous.result())
    if bar is not None:
        bar.close()
    return counts[: len(tokenizer)] if size > len(tokenizer) and not counts[len(tokenizer):].any() else counts


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------

def frequency_order(counts: np.ndarray) -> np.ndarray:
    """Token ids sorted by count, descending; ties by id (a stable, reproducible order)."""
    return np.argsort(-np.asarray(counts), kind="stable")


def zipf_fit(counts: np.ndarray, min_count: int = 2, points: int = 200) -> tuple[float, float]:
    """Fit ``log f = c - s log r`` to the rank-frequency curve; return ``(s, c)`` (natural logs).

    Fitted on ``points`` log-spaced ranks among the tokens seen at least ``min_count`` times, so that the
    thousands of tail ranks do not outweigh the head (and singletons, whose ranks are arbitrary, are out).
    """
    f = np.sort(np.asarray(counts))[::-1]
    f = f[f >= min_count]
    if len(f) < 3:
        return float("nan"), float("nan")
    ranks = np.unique(np.geomspace(1, len(f), num=min(points, len(f))).astype(np.int64))
    slope, intercept = np.polyfit(np.log(ranks), np.log(f[ranks - 1].astype(np.float64)), 1)
    return float(-slope), float(intercept)


def coverage_curve(counts: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """``curve[k-1]`` = share of tokens covered by the first ``k`` ids of ``order`` (default: by ``counts``)."""
    counts = np.asarray(counts, dtype=np.float64)
    order = frequency_order(counts) if order is None else np.asarray(order)
    total = counts.sum()
    if total == 0:
        return np.zeros(len(order))
    return np.cumsum(counts[order]) / total


def coverage(counts: np.ndarray, sizes: Iterable[int] = COVERAGE_SIZES,
             order: np.ndarray | None = None) -> dict[int, float]:
    """Share of the tokens in ``counts`` covered by the top ``k`` ids of ``order`` for each size ``k``.

    ``order`` lets one rank by one distribution (the corpus) and measure on another (a task's texts).
    """
    curve = coverage_curve(counts, order)
    return {int(k): float(curve[min(k, len(curve)) - 1]) for k in sizes}


def summarize(counts: np.ndarray, sizes: Iterable[int] = COVERAGE_SIZES) -> dict[str, Any]:
    s, c = zipf_fit(counts)
    return {
        "corpus_tokens": int(counts.sum()),
        "vocab_size": int(len(counts)),
        "types_seen": int((counts > 0).sum()),
        "zipf_exponent": s,
        "zipf_intercept": c,
        "coverage": {str(k): v for k, v in coverage(counts, sizes).items()},
    }


def counts_table(counts: np.ndarray, tokenizer: Any):
    """A DataFrame with one row per vocabulary entry, most frequent first.

    Columns: ``token_id``, ``token`` (the tokenizer's own spelling, e.g. ``Ġthe``), ``text`` (decoded),
    ``count``, ``rank`` (1-based), ``share``, ``cum_share``, ``special``.
    """
    import pandas as pd

    counts = np.asarray(counts)
    order = frequency_order(counts)
    ids = order.tolist()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    total = max(int(counts.sum()), 1)
    return pd.DataFrame({
        "token_id": order,
        "token": tokenizer.convert_ids_to_tokens(ids),
        "text": [tokenizer.decode([i]) for i in ids],
        "count": counts[order],
        "rank": np.arange(1, len(order) + 1),
        "share": counts[order] / total,
        "cum_share": np.cumsum(counts[order]) / total,
        "special": [i in special for i in ids],
    })


def write_counts(counts: np.ndarray, tokenizer: Any, path: Path | str):
    """Write :func:`counts_table` as CSV, atomically; returns the table.

    Every text field is quoted: tokens such as a lone ``\\r`` would otherwise split a row in two.
    """
    import csv

    from glmd_lib.artifacts import atomic_path

    table = counts_table(counts, tokenizer)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return table


def read_counts_table(path: Path | str):
    """The full ``counts.csv`` as a DataFrame (tokens such as ``null`` or ``NaN`` stay strings)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise CorpusError(f"counts file {path} does not exist: run notebook 01 first")
    return pd.read_csv(path, keep_default_na=False, dtype={"token": str, "text": str})


def read_counts(path: Path | str, vocab_size: int | None = None) -> np.ndarray:
    """Counts indexed by token id from a ``counts.csv`` written by notebook 01."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise CorpusError(f"counts file {path} does not exist: run notebook 01 first")
    df = pd.read_csv(path, usecols=["token_id", "count"], dtype={"token_id": np.int64, "count": np.int64})
    n = vocab_size if vocab_size is not None else int(df["token_id"].max()) + 1
    if df["token_id"].max() >= n or len(df) != n:
        raise CorpusError(f"{path} has {len(df)} rows (max id {df['token_id'].max()}) but the vocabulary has "
                          f"{n} entries: was it counted with another tokenizer?")
    counts = np.zeros(n, dtype=np.int64)
    counts[df["token_id"].to_numpy()] = df["count"].to_numpy()
    return counts
