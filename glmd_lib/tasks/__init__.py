"""SuperGLUE task models: cloze scores and the one predict path (``scoring``), task-teacher fine-tuning on the
trainer (``teachers``), evaluation of every model (``evaluate``, ``figures``), leaderboard files (``submission``)."""
