"""Flax NNX models. The only part of jaxlab that imports flax."""
