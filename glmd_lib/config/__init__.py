"""Typed experiment configs: the base machinery and one config per notebook."""
