"""Diffusion models: schedules, Gaussian oracle, DDPM and DDIM (reference/ddim.md).

Import the submodules explicitly, e.g. ``from jaxlab.diffusion import ddim``.
"""

from jaxlab.diffusion import ddim as ddim
from jaxlab.diffusion import ddpm as ddpm
from jaxlab.diffusion import gaussian as gaussian
from jaxlab.diffusion import schedules as schedules
