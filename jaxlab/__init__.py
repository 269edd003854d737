"""jaxlab: functional JAX reproductions of eight 2022 research notes.

Importing the package is cheap: it holds the version only. Import the topic
modules explicitly, e.g. ``from jaxlab import losses``.
"""

__version__ = "0.1.0"
