"""Unit tests of lmkit.env (chapter 0)."""

import random
import sys

import numpy as np
import pytest
import torch

from lmkit import env


def test_pick_device_prefers_explicit_choice():
    assert env.pick_device("cpu") == "cpu"
    assert env.pick_device("cuda:1") == "cuda:1"


def test_pick_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert env.pick_device() == "cpu"
    assert env.pick_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert env.pick_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.pick_device() == "cuda"


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), torch.randn(3).tolist()

    assert env.seed_everything(123) == 123
    first = draw()
    env.seed_everything(123)
    assert draw() == first
    env.seed_everything(124)
    assert draw() != first


def test_seed_everything_known_values():
    # The numbers chapter 0 shows: stable across machines for a given torch version.
    env.seed_everything(0)
    assert [round(v, 4) for v in torch.randn(3).tolist()] == [1.5410, -0.2934, -2.1788]


def test_in_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert env.in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert env.in_colab() is True


def test_report_prints_table_and_returns_rows():
    lines = []
    rows = env.report(print_fn=lines.append)
    assert rows and all(isinstance(r, env.Row) for r in rows)
    names = {r.name for r in rows}
    assert {"python", "torch", "device", "transformers", "offline encoder"} <= names
    assert len(lines) == 1
    table = lines[0].splitlines()
    assert len(table) == len(rows) + 1
    assert all(line.startswith(("[OK]", "[FAIL]")) for line in table[:-1])
    assert table[-1].endswith("FAIL")
    # In the project's own environment everything is installed.
    assert [r for r in rows if not r.ok] == []


def test_report_default_prints(capsys):
    env.report()
    out = capsys.readouterr().out
    assert "[OK]" in out and "torch" in out


def test_report_silent(capsys):
    rows = env.report(print_fn=None)
    assert rows
    assert capsys.readouterr().out == ""


def test_missing_package_is_a_failure():
    row = env._package_row("no_such_module_xyz", "no-such-dist", "nothing")
    assert row.ok is False and row.value == "missing"


def test_format_rows_alignment():
    text = env.format_rows([env.Row(True, "a", "1", "x"), env.Row(False, "long name", "22")])
    lines = text.splitlines()
    assert lines[0] == "[OK]   a          1   x"
    assert lines[1] == "[FAIL] long name  22"
    assert lines[2] == "1 OK, 1 FAIL"


@pytest.mark.parametrize(
    "text,expected", [("2.13.0+cpu", (2, 13)), ("2.2.0a0", (2, 2)), ("3.1", (3, 1))]
)
def test_version_tuple(text, expected):
    assert env._version_tuple(text) == expected
