"""Run a Python snippet in a fresh process with N forced CPU devices.

The number of XLA host devices is fixed when JAX starts, so multi-device tests
run their body in a subprocess; the snippet prints one JSON line last.
"""

import json
import os
import subprocess
import sys

# XLA CPU compiles about twice as fast with these (test programs are compile-bound);
# results may differ in round-off from the default flags, so only compare runs
# made with the same flags.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
)


def run_json(
    script: str,
    *,
    devices: int,
    timeout: float = 900.0,
    xla_flags: tuple[str, ...] = (),
) -> dict:
    """Run ``script`` on ``devices`` CPU devices; parse its last stdout line as JSON."""
    flags = " ".join((f"--xla_force_host_platform_device_count={devices}", *xla_flags))
    env = {
        **os.environ,
        "XLA_FLAGS": flags,
        "JAX_PLATFORMS": "cpu",
        "JAXLAB_PROGRESS": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
