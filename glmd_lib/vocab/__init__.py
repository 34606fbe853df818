"""Token frequencies and vocabulary compression (the VocabMap)."""
