"""Report writing."""

import json

import matplotlib

matplotlib.use("Agg")
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxlab.report import Report, loss_figure, markdown_table  # noqa: E402


def test_report_files(tmp_path):
    rep = Report("demo", tmp_path)
    rep.text("hello")
    rep.table(["a", "b"], [[1, 0.123456], ["x", jnp.float32(2.5)]], caption="T")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    rep.figure(fig, "curve", "a line")
    out = rep.write({"acc": np.float32(0.5), "arr": jnp.arange(3), "bad": float("nan")})
    assert json.loads((tmp_path / "results.json").read_text()) == out
    assert out == {"acc": 0.5, "arr": [0, 1, 2], "bad": "nan"}
    md = (tmp_path / "report.md").read_text()
    assert (
        md.startswith("# demo")
        and "| 1 | 0.1235 |" in md
        and "![a line](curve.png)" in md
    )
    assert (tmp_path / "curve.png").exists()


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a", "b"], [[1]])


@pytest.mark.parametrize("several", [False, True])
def test_loss_figure_plots_each_history(several):
    history = [{"step": s, "loss": 1.0 / (s + 1)} for s in (0, 10, 20)]
    histories = {"a": history, "b": history[:2]} if several else history
    fig = loss_figure(histories, ylabel="mse", title="t")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == (2 if several else 1)
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 10, 20])
    np.testing.assert_array_equal(lines[0].get_ydata(), [1.0, 1 / 11, 1 / 21])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "mse"
    assert (ax.get_legend() is not None) == several
    plt.close(fig)


@pytest.mark.parametrize("bad", [[], [{"step": 0}], {"a": [{"loss": 1.0}]}])
def test_loss_figure_rejects_what_is_not_a_history(bad):
    with pytest.raises(ValueError, match="fit history"):
        loss_figure(bad)
