"""The distillation method: losses, teacher logits (live or cached), stage 1 and stage 2."""
