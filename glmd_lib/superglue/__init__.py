"""SuperGLUE, pure Python (no torch): readers (``data``), cloze patterns and verbalizers (``patterns``), official
metrics (``metrics``), the archive downloader (``download``) and tiny files in the official format (``toy``)."""
