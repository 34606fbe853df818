"""SuperGLUE: readers (``data``), cloze patterns and verbalizers (``patterns``), official metrics
(``metrics``) and the archive downloader (``download``)."""
from glmd_lib.superglue.data import TASKS, DataError, Example, MissingDataError, example_texts, read_split, subsample

__all__ = ["TASKS", "DataError", "Example", "MissingDataError", "example_texts", "read_split", "subsample"]
