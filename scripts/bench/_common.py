"""What every benchmark's final JSON line says about the machine it ran on."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    """Platform, device kind, core count, CPU architecture, jax version, load.

    The keys of reference/benchmarks.md rule 4; ``load_avg_1min`` tells a
    reader whether the machine was shared while it was measured.
    """
    import jax

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "jax_version": jax.__version__,
        "load_avg_1min": os.getloadavg()[0],
    }
