"""GLMD against its baselines and ablations at equal budget (issue #13): ``glmd compare`` and notebook 08."""
