"""The `jaxlab` command: list, run, --set parsing, reproduce."""

import dataclasses
import json
import subprocess
import sys
import types

import pytest

from jaxlab import cli, experiments


def test_list_names_sanity_first(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sanity ")
    assert "digits" in out[0]


def test_unknown_experiment_lists_available(capsys):
    assert cli.main(["run", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown experiment 'nosuch'" in err and "sanity" in err
    assert len(err.splitlines()) == 1


def test_bad_set_value_names_field_and_type(capsys):
    assert cli.main(["run", "sanity", "--quick", "--set", "steps=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jaxlab: error: config key 'steps' expects int, got 'abc'"


def test_unknown_set_key_lists_valid_keys(capsys):
    assert cli.main(["run", "sanity", "--set", "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'stepz'" in err and "steps" in err and "seed" in err


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 1
    lr: float = 0.1
    name: str = "a"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None


@pytest.mark.parametrize(
    "item, field, value",
    [
        ("n=7", "n", 7),
        ("lr=1e-3", "lr", 1e-3),
        ("name=xy", "name", "xy"),
        ("flag=true", "flag", True),
        ("flag=0", "flag", False),
        ("sizes=3,4,5", "sizes", (3, 4, 5)),
        ("limit=none", "limit", None),
        ("limit=9", "limit", 9),
    ],
)
def test_apply_overrides_parses_by_type(item, field, value):
    assert getattr(experiments.apply_overrides(_Cfg(), [item]), field) == value


@pytest.mark.parametrize("item", ["flag=maybe", "sizes=1,x", "n=1.5", "n"])
def test_apply_overrides_rejects(item):
    with pytest.raises(experiments.ConfigError):
        experiments.apply_overrides(_Cfg(), [item])


def test_run_sanity_end_to_end(tmp_path):
    results = cli.run_experiment(
        "sanity", quick=True, out=tmp_path, overrides=["steps=300"]
    )
    out = tmp_path / "sanity"
    assert json.loads((out / "results.json").read_text())["steps"] == 300
    assert (out / "report.md").read_text().startswith("# sanity")
    assert (out / "loss_curve.png").stat().st_size > 1000
    # 300 Adam steps on digits: far above the 10% of chance (measured ~0.97)
    assert results["test_accuracy"] > 0.9


def test_reproduce_keeps_going_after_a_failure(tmp_path, monkeypatch):
    def fake(name, fail):
        @dataclasses.dataclass(frozen=True)
        class Config:
            x: int = 0

            @classmethod
            def quick(cls):
                return cls()

            full = quick

        def run(config, out_dir):
            if fail:
                raise RuntimeError("boom")
            (out_dir / "report.md").write_text("# ok\n")
            return {}

        return types.SimpleNamespace(Config=Config, run=run)

    mods = {"alpha": fake("alpha", True), "beta": fake("beta", False)}
    monkeypatch.setattr(experiments, "names", lambda: list(mods))
    monkeypatch.setattr(experiments, "load", lambda n: mods[n])
    assert cli.reproduce(quick=True, out=tmp_path) == 1
    index = (tmp_path / "report.md").read_text()
    assert "| alpha | failed: RuntimeError: boom |" in index
    assert "| beta | ok |" in index and "(beta/report.md)" in index


def test_every_experiment_follows_the_contract():
    for name in experiments.names():
        module = experiments.load(name)
        for preset in (module.Config.quick(), module.Config.full()):
            assert dataclasses.is_dataclass(preset)
            with pytest.raises(dataclasses.FrozenInstanceError):
                preset.seed = 1  # every experiment has a seed and is frozen
        assert experiments.describe(name) != "(no description)"


def test_import_jaxlab_is_light():
    # What makes the import light: neither jax nor flax is imported by it.
    code = "import sys, jaxlab; print('flax' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlab", "run", "nosuch"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "available: sanity" in proc.stderr
