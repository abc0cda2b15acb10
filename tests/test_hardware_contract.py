"""Every chapter states its hardware contract (issue 14): one ``**Hardware.**`` sentence in its
introduction, written by scripts/hardware_contract.py, whose CPU bound still holds for the last
measured run (book/status.json) and whose GPU half is the script's table of T4 estimates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import hardware_contract as hc  # noqa: E402  (a script, imported from its folder)

STATUS = json.loads(hc.STATUS.read_text())["notebooks"]


@pytest.mark.parametrize("path", hc.chapters(), ids=lambda p: p.stem)
def test_the_introduction_states_the_hardware_contract(path):
    intro = nbformat.read(path, as_version=4).cells[0]
    lines = hc.LINE.findall(intro.source)
    assert len(lines) == 1, "run: python scripts/hardware_contract.py"
    wall = STATUS[f"book/{path.stem}"]["wall_s"]
    assert wall <= hc.parse_bound_s(lines[0]), (
        f"{path.stem} took {wall} s on the CPU, over the bound its introduction states: "
        "run python scripts/hardware_contract.py"
    )
    gpu_half = hc.sentence(path.stem, STATUS).split(" GPU preset")[1]
    assert lines[0].endswith(gpu_half), "run: python scripts/hardware_contract.py"


def test_every_chapter_with_a_gpu_preset_has_an_estimate():
    from book_toc import toc_notebooks

    with_preset = {
        p.stem
        for p in toc_notebooks()
        if "PRESET" in "".join(c.source for c in nbformat.read(p, as_version=4).cells[:4])
    }
    assert with_preset <= set(hc.T4_ESTIMATES), with_preset - set(hc.T4_ESTIMATES)


@pytest.mark.parametrize(
    "wall, bound, said",
    [(9.0, 15, "15 s"), (14.8, 30, "30 s"), (33.4, 60, "a minute"), (58, 90, "1.5 minutes")],
)
def test_cpu_bounds_round_up_with_a_margin(wall, bound, said):
    assert hc.cpu_bound_s(wall) == bound and hc.say_seconds(bound) == said
    assert hc.parse_bound_s(f"CPU preset: under {said} on 2 cores") == bound


def test_a_sentence_is_replaced_not_added(tmp_path):
    line = hc.sentence("ch10_training", STATUS)
    once = hc.with_sentence("# Title\n\nIntro.", line)
    assert once.endswith("\n\n" + line)
    assert hc.with_sentence(once.replace("30 s", "15 s"), line) == once
