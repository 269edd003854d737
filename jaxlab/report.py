"""Experiment reports: ``results.json``, ``report.md`` and PNG figures.

Experiments build a :class:`Report`, add text, tables and figures, and call
:meth:`Report.write` with their results dict.
"""

from __future__ import annotations

import json
import math
import numbers
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Report", "markdown_table", "to_jsonable"]


class Report:
    """Collects markdown for one experiment and writes it next to its figures.

    Args:
        title: the report's H1 title.
        out_dir: the experiment's output folder (created if missing).
    """

    def __init__(self, title: str, out_dir: str | pathlib.Path):
        self.title = title
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._parts: list[str] = []

    def text(self, markdown: str) -> None:
        """Append a paragraph of markdown."""
        self._parts.append(markdown.strip())

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        caption: str | None = None,
    ) -> None:
        """Append a markdown table (floats to 4 significant digits)."""
        block = markdown_table(headers, rows)
        if caption:
            block = f"{caption}\n\n{block}"
        self._parts.append(block)

    def figure(self, fig, name: str, caption: str = "") -> str:
        """Save ``fig`` as ``out_dir/name.png``, close it, and embed it."""
        import matplotlib.pyplot as plt

        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"figure name must be a plain file stem, got {name!r}")
        filename = f"{name}.png"
        fig.savefig(self.out_dir / filename, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self._parts.append(f"![{caption or name}]({filename})" + (
            f"\n\n*{caption}*" if caption else ""))
        return filename

    def markdown(self) -> str:
        """The report's markdown text."""
        return "\n\n".join([f"# {self.title}", *self._parts]) + "\n"

    def write(self, results: dict) -> dict:
        """Write ``results.json`` and ``report.md``; returns the JSON-safe results."""
        clean = to_jsonable(results)
        _atomic_write(self.out_dir / "results.json", json.dumps(clean, indent=2))
        _atomic_write(self.out_dir / "report.md", self.markdown())
        return clean


def pyplot():
    """matplotlib's ``pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_figure(histories, *, ylabel: str = "loss", title: str = "training loss"):
    """A log-scale loss-vs-step figure of one or several ``fit`` histories.

    Args:
        histories: a ``fit`` history (a list of ``{"step", "loss", ...}`` dicts)
            or a mapping ``label -> history`` for several curves with a legend.
        ylabel: the y-axis label.
        title: the figure title.

    Returns:
        The matplotlib figure (pass it to :meth:`Report.figure`).

    Raises:
        ValueError: a history is empty or lacks ``step``/``loss`` entries.
    """
    curves = histories if isinstance(histories, dict) else {None: histories}
    for label, history in curves.items():
        if not history or not all(
            isinstance(h, dict) and "step" in h and "loss" in h for h in history
        ):
            raise ValueError(
                f"histories[{label!r}] must be a non-empty list of dicts with "
                f"'step' and 'loss' (a fit history), got {history!r:.80}"
            )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, history in curves.items():
        ax.plot([h["step"] for h in history], [h["loss"] for h in history],
                label=label)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return fig


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format ``rows`` as a GitHub markdown table."""
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"row {i} has {len(row)} cells but there are {len(headers)} headers"
            )
    lines = ["| " + " | ".join(str(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/jax scalars and arrays (recursively) to JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, pathlib.Path):
        return str(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, numbers.Number):
        arr = np.asarray(obj)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        x = float(obj)
        return x if math.isfinite(x) else str(x)  # JSON has no inf/nan
    raise TypeError(f"cannot store {type(obj).__name__} in results.json")


def _cell(value: Any) -> str:
    """One table cell: floats to 4 significant digits."""
    if hasattr(value, "__array__") and np.ndim(value) == 0:
        value = np.asarray(value).item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _atomic_write(path: pathlib.Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash leaves no half file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
