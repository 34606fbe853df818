"""Reading text corpora: one streaming reader for every kind of source, and one error for bad input.

:func:`iter_corpus_lines` streams the non-empty lines of a text file, a folder of ``.txt`` files, a list
of files, a ``datasets`` dataset (in memory or saved with ``save_to_disk``) or any iterable of strings.
Nothing is loaded whole. Counting (``glmd_lib.vocab.frequency``) and token blocks for distillation
(``glmd_lib.data.blocks``) both read through it, so a corpus that one accepts the other accepts too.

Everything that goes wrong with a corpus raises :class:`CorpusError` with the file (and line) and what
to do: a missing path, undecodable bytes, an empty corpus, a corpus too small for one batch.
:func:`superglue_texts` gives the raw texts of a SuperGLUE task in the same form (a list of lines), so
the task distribution can be counted like a corpus.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from glmd_lib.data.paths import resolve_corpus_dir
from glmd_lib.superglue import data as sg


class CorpusError(ValueError):
    """A corpus is missing, empty, undecodable or too small; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def corpus_files(path: Path | str) -> list[Path]:
    """The text files of a corpus path: the file itself, or the folder's ``*.txt`` files (sorted, recursive)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(f"corpus folder {path} contains no .txt files")
    return files


def default_corpus(split: str) -> list[Path]:
    """The shared corpus files of ``split`` ("train": the ``train-*.txt`` shards, "valid": ``valid.txt``).

    The folder also holds ``valid.txt``: reading the folder as a whole would mix the held-out text into
    the training text (and into the counts that choose the kept vocabulary), hence the explicit split.
    """
    root = resolve_corpus_dir()
    pattern = "train-*.txt" if split == "train" else "valid.txt"
    files = [f for f in sorted(root.glob(pattern)) if f.is_file()]
    if not files:
        raise CorpusError(f"no {split} text found in the corpus folder {root} (expected {pattern}); set the "
                          f"corpus parameter or $GLMD_CORPUS")
    return files


def describe_source(source: Any) -> str:
    """A short, stable name for a corpus source (for summaries and error messages)."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if _is_file_list(source):
        parents = {str(f.parent) for f in source}
        if len(source) == 1 or len(parents) > 1:
            return ", ".join(map(str, source))
        return f"{parents.pop()}/{{{','.join(f.name for f in source)}}}"
    return f"<{type(source).__name__} of texts>"


def _is_file_list(source: Any) -> bool:
    return isinstance(source, (list, tuple)) and bool(source) and all(isinstance(s, Path) for s in source)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------

def _text_column(ds: Any, where: str) -> str:
    names = list(ds.column_names)
    if "text" in names:
        return "text"
    strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise CorpusError(f"dataset {where} has no 'text' column and not exactly one string column (columns: {names})")


def _iter_dataset(ds: Any, where: str, batch: int = 1000) -> Iterator[str]:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise CorpusError(f"dataset {where} has no 'train' split (splits: {list(ds)}); pass one split")
        ds = ds["train"]
    col = _text_column(ds, where)
    for rows in ds.iter(batch_size=batch):
        for text in rows[col]:
            if text is None:
                continue
            if not isinstance(text, str):
                raise CorpusError(f"dataset {where}: column {col!r} holds {type(text).__name__}, not text")
            yield from text.splitlines()


def _decode(data: bytes, path: Path, lines_before: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:  # count the line breaks before the bad byte to name the line
        lineno = lines_before + data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        raise CorpusError(f"{path}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start - start} "
                          f"of the line); convert the file to UTF-8 or remove that line") from None


def _iter_file(path: Path, block: int = 1 << 20) -> Iterator[str]:
    # Read ~1 MB blocks cut at a line break and decode each block at once (much faster than line by line).
    lines_before = 0
    tail = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block)
            data = tail + chunk
            if not chunk:
                tail = b""
            else:
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
                if not data:  # a line longer than the block: keep reading
                    tail = data + tail
                    continue
            if not data:
                return
            text = _decode(data, path, lines_before)
            lines_before += data.count(b"\n")
            yield from (text[:-1] if text.endswith("\n") else text).split("\n")
            if not chunk:
                return


def _iter_path(path: Path) -> Iterator[str]:
    """The raw lines of one path: a saved ``datasets`` folder, a text file or a folder of ``.txt`` files."""
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist")
    if _is_saved_dataset(path):
        import datasets

        return _iter_dataset(datasets.load_from_disk(str(path)), str(path))
    return itertools.chain.from_iterable(_iter_file(f) for f in corpus_files(path))


def _raw_lines(source: Any) -> Iterable[str]:
    if isinstance(source, (str, os.PathLike)):
        return _iter_path(Path(source).expanduser())
    if _is_file_list(source):
        return itertools.chain.from_iterable(_iter_path(Path(f).expanduser()) for f in source)
    if type(source).__module__.startswith("datasets"):
        return _iter_dataset(source, f"<{type(source).__name__}>")
    return itertools.chain.from_iterable(str(t).splitlines() for t in source)


def iter_corpus_lines(source: Any, max_lines: int | None = None) -> Iterator[str]:
    """Stream the non-empty lines of a corpus (without line breaks).

    ``source``: a text file, a folder of ``.txt`` files, a list of ``Path`` objects (read in order), a saved
    ``datasets`` folder, a ``datasets.Dataset`` (its ``text`` column), or any iterable of strings (each may
    hold several lines). Raises :class:`CorpusError` for a missing path, undecodable bytes (naming file and
    line) and a corpus without a single non-empty line.
    """
    if max_lines is not None and max_lines < 1:
        raise CorpusError(f"max_lines must be >= 1, got {max_lines}")
    n = 0
    for line in _raw_lines(source):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        yield line
        n += 1
        if max_lines is not None and n >= max_lines:
            return
    if n == 0:
        raise CorpusError(f"corpus {describe_source(source)} is empty (no non-empty lines)")


# --------------------------------------------------------------------------------------------
# SuperGLUE texts (task-aware counts)
# --------------------------------------------------------------------------------------------

def superglue_texts(task: str, data_dir: Path | str, max_examples: int | None = None) -> list[str]:
    """The raw texts (premises, questions, passages, choices ...) of every split of a SuperGLUE task.

    ``max_examples`` caps the examples read per split. Labels and verbalizers are not included: this is
    the text a student has to read, not what it has to answer. Read with the project's SuperGLUE readers,
    so the texts are exactly those the later notebooks see.
    """
    if task not in sg.TASKS:
        raise CorpusError(f"unknown SuperGLUE task {task!r}; known: {list(sg.TASKS)}")
    folder = Path(data_dir).expanduser() / task
    if not folder.is_dir():
        there = sorted(p.name for p in Path(data_dir).expanduser().glob("*") if p.is_dir())
        raise CorpusError(f"SuperGLUE task folder {folder} does not exist (is superglue_dir right? tasks there: "
                          f"{there})")
    splits = ("test",) if task in sg.DIAGNOSTICS else sg.SPLITS
    present = [s for s in splits if sg.has_split(task, s, data_dir)]
    if not present:
        raise CorpusError(f"SuperGLUE task {task} in {data_dir}: none of the splits {list(splits)} exists")
    texts = [t for split in present for ex in sg.read_split(task, split, data_dir, max_examples=max_examples)
             for t in sg.example_texts(ex) if t]
    if not texts:
        raise CorpusError(f"SuperGLUE task {task} in {data_dir}: no texts found")
    return texts
