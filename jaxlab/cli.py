"""The ``jaxlab`` command: list, run and reproduce experiments.

    jaxlab list
    jaxlab run NAME [--quick] [--set key=value ...] [--out DIR] [--distributed]
    jaxlab reproduce [--quick] [--out DIR] [--distributed]

``--set mesh=N`` (or ``data=N``, ``all``) is accepted by every experiment: it
runs the shared train loop data-parallel over N devices. ``--distributed``
joins a multi-process job first (``jax.distributed.initialize``; see
:func:`jaxlab.parallel.initialize_distributed` for the environment variables);
process 0 writes to ``--out``, process k > 0 to ``--out/process_k``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
import traceback

from . import experiments

DEFAULT_OUT = "runs"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "distributed", False):
            from . import parallel

            parallel.initialize_distributed()
            parallel.set_default_mesh(parallel.make_mesh())  # all processes' devices
            args.out = _process_out(args.out)
        if args.command == "list":
            for name in experiments.names():
                print(f"{name:14s} {experiments.describe(name)}")
            return 0
        if args.command == "run":
            run_experiment(
                args.name, quick=args.quick, overrides=args.set, out=args.out
            )
            return 0
        return reproduce(quick=args.quick, out=args.out)
    except experiments.ConfigError as err:
        print(f"jaxlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxlab: interrupted", file=sys.stderr)
        return 130


def run_experiment(
    name: str, *, quick: bool = False, overrides=(), out=DEFAULT_OUT
) -> dict:
    """Run one experiment into ``out/NAME`` and return its results."""
    module = experiments.load(name)
    config = module.Config.quick() if quick else module.Config.full()
    overrides = list(overrides or [])
    mesh_specs = [
        o.partition("=")[2] for o in overrides if o.partition("=")[0].strip() == "mesh"
    ]
    overrides = [o for o in overrides if o.partition("=")[0].strip() != "mesh"]
    config = experiments.apply_overrides(config, overrides)
    if mesh_specs:
        from . import parallel

        try:
            parallel.set_default_mesh(parallel.mesh_from_spec(mesh_specs[-1]))
        except ValueError as err:
            raise experiments.ConfigError(str(err)) from None
    out_dir = pathlib.Path(out) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(
        json.dumps(dataclasses.asdict(config), indent=2)
    )
    print(
        f"jaxlab: running {name} ({'quick' if quick else 'full'}) -> {out_dir}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    results = module.run(config, out_dir)
    print(
        f"jaxlab: {name} finished in {time.perf_counter() - start:.1f} s; "
        f"report: {out_dir / 'report.md'}",
        file=sys.stderr,
    )
    return results


def reproduce(*, quick: bool = False, out=DEFAULT_OUT) -> int:
    """Run every experiment; write ``out/report.md`` with one status line each.

    A failing experiment is recorded with its error and the others still run.
    Returns 0 if all succeeded, 1 otherwise.
    """
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in experiments.names():
        start = time.perf_counter()
        try:
            run_experiment(name, quick=quick, out=out_dir)
            status = "ok"
        except Exception as err:  # keep going: one failure must not stop the rest
            traceback.print_exc()
            first = str(err).splitlines()[0] if str(err) else ""
            status = f"failed: {type(err).__name__}: {first}"
        seconds = time.perf_counter() - start
        rows.append((name, status, seconds))
        print(f"jaxlab: {name}: {status} ({seconds:.0f} s)", file=sys.stderr)
    lines = [
        "# jaxlab reproductions",
        "",
        f"Preset: {'quick' if quick else 'full'}. One line per experiment.",
        "",
        "| experiment | status | time (s) | report |",
        "|---|---|---|---|",
    ]
    for name, status, seconds in rows:
        link = f"[{name}/report.md]({name}/report.md)" if status == "ok" else "—"
        lines.append(
            f"| {name} | {status.replace('|', '/')} | {seconds:.0f} | {link} |"
        )
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    failed = [name for name, status, _ in rows if status != "ok"]
    print(
        f"jaxlab: wrote {out_dir / 'report.md'}; "
        f"{len(rows) - len(failed)} ok, {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _process_out(out):
    """Process 0 writes to ``out``; process k > 0 to ``out/process_k``."""
    import jax

    k = jax.process_index()
    return out if k == 0 else str(pathlib.Path(out) / f"process_{k}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list experiments")
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("name")
    run.add_argument("--quick", action="store_true", help="CPU-minutes preset")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a Config field (repeatable); mesh=N runs data-parallel",
    )
    run.add_argument("--out", default=DEFAULT_OUT, help="output root (default: runs)")
    run.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed.initialize)",
    )
    rep = sub.add_parser("reproduce", help="run every experiment and write an index")
    rep.add_argument("--quick", action="store_true")
    rep.add_argument("--out", default=DEFAULT_OUT)
    rep.add_argument("--distributed", action="store_true")
    return parser
