"""Unit tests for lmkit.apps.music (chapter 21): fast and offline."""

import numpy as np
import pytest

from lmkit.apps import music as M


def test_degree_to_pitch_and_hz():
    assert [M.degree_to_pitch(d, 0) for d in range(8)] == [60, 62, 64, 65, 67, 69, 71, 72]
    assert M.degree_to_pitch(-1, 0) == 59
    assert M.degree_to_pitch(0, 9, "minor") == 57
    assert M.midi_to_hz(69) == pytest.approx(440.0)
    assert M.midi_to_hz(81) / M.midi_to_hz(69) == pytest.approx(2.0)


def test_generate_melody_rules():
    for seed in range(30):
        m = M.generate_melody(seed=seed)
        assert sum(d for _, d in m.notes) == 32
        assert M.in_key_ratio(m) == 1.0
        assert m.notes[-1][0] % 12 == m.tonic
        assert all(M.LOW <= p <= M.HIGH for p, _ in m.notes)
    assert M.generate_melody(seed=3) == M.generate_melody(seed=3)


def test_corpus_keys_and_stats():
    ms = M.melody_corpus(50, seed=0, tonics=[2], modes=["minor"])
    assert {(m.tonic, m.mode) for m in ms} == {(2, "minor")}
    s = M.melody_stats(ms)
    assert s["melodies"] == 50 and s["in_key"] == 1.0 and s["ends_on_tonic"] == 1.0
    assert 0 <= s["steps"] <= 1 and s["range"] > 0


def test_tokenizer_round_trip_and_tolerance():
    tok = M.MusicTokenizer()
    assert len(tok) == 4 + 24 + (M.HIGH - M.LOW + 1) + len(M.DURATIONS)
    for m in M.melody_corpus(40, seed=1):
        ids = tok.encode(m)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == m
    bad = [
        tok.bos_id,
        tok.stoi["K:Dm"],
        tok.stoi["P60"],
        tok.stoi["P62"],
        tok.stoi["D2"],
        tok.stoi["D4"],
        tok.eos_id,
    ]
    m = tok.decode(bad)
    assert m.notes == [(62, 2)] and (m.tonic, m.mode) == (2, "minor")


def test_statistics():
    m = M.Melody([(60, 2), (62, 2), (64, 2), (61, 2), (60, 2), (62, 2), (64, 2)], 0, "major")
    assert M.intervals(m) == [2, 2, -3, -1, 2, 2]
    assert M.in_key_ratio(m) == pytest.approx(6 / 7)
    assert M.pitch_range(m) == 4
    assert M.repetition(m, n=2) == pytest.approx(1 / 5)
    h = M.interval_histogram([m])
    assert h.shape == (25,) and h.sum() == pytest.approx(1.0) and h[12 + 2] == pytest.approx(4 / 6)
    assert M.repetition(M.Melody([(60, 1)], 0)) == 0.0


def test_synthesize_and_piano_roll():
    m = M.Melody([(69, 2), (72, 2)], 9, "minor")
    w = M.synthesize(m, bpm=120, sr=8000)
    assert w.dtype == np.float32 and np.abs(w).max() <= 0.8 + 1e-6
    assert len(w) == pytest.approx(8000 * 1.0, abs=2)  # 4 eighths at 120 bpm = 1 s
    roll = M.piano_roll(m)
    assert roll.shape == (M.HIGH - M.LOW + 1, 4) and roll.sum() == 4 and roll[69 - M.LOW, 0] == 1


def test_plot_piano_rolls():
    import matplotlib.pyplot as plt

    fig = M.plot_piano_rolls(M.melody_corpus(3, seed=0), ncols=2)
    assert len(fig.axes) == 4
    plt.close(fig)
