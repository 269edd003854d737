"""``python -m jaxlab`` is the ``jaxlab`` command."""

import sys

from .cli import main

sys.exit(main())
