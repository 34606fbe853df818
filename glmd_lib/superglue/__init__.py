"""SuperGLUE: readers (``data``), cloze patterns and verbalizers (``patterns``), official metrics
(``metrics``) and the archive downloader (``download``)."""
from .data import TASKS, DataError, Example, MissingDataError, example_texts, read_split, subsample

__all__ = ["TASKS", "DataError", "Example", "MissingDataError", "example_texts", "read_split", "subsample"]
