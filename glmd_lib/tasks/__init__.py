"""SuperGLUE task models: cloze scoring, task-teacher fine-tuning, evaluation, submissions."""
