"""Symbolic music for language models: melodies, tokens, statistics, piano rolls and audio.

A melody is a list of ``(pitch, duration)`` notes: ``pitch`` is a MIDI note number (60 = middle C)
and ``duration`` is counted in eighth notes. :func:`generate_melody` writes seeded melodies in a key
from simple rules (a Markov chain over scale degrees, one-bar rhythm patterns, a repeated motif, an
ending on the tonic); :class:`MusicTokenizer` turns them into pitch/duration tokens for a GPT.
Explained in chapter 21.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

PITCH_CLASSES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}  # natural minor
RHYTHMS = [  # one 4/4 bar = 8 eighth notes
    [2, 2, 2, 2],
    [1, 1, 2, 2, 2],
    [2, 1, 1, 2, 2],
    [4, 2, 2],
    [2, 2, 4],
    [3, 1, 2, 2],
    [1, 1, 1, 1, 2, 2],
]
STEP_PROBS = {-4: 0.04, -2: 0.12, -1: 0.3, 0: 0.08, 1: 0.3, 2: 0.12, 4: 0.04}  # degree steps
DURATIONS = [1, 2, 3, 4, 6, 8]
LOW, HIGH = 48, 84  # pitch range of the vocabulary (C3..C6)
BAR_LEN = 8


@dataclass
class Melody:
    """A melody: ``notes`` [(midi_pitch, eighths)], its
    ``tonic`` pitch class (0-11) and ``mode``."""

    notes: list
    tonic: int
    mode: str = "major"

    @property
    def key_name(self) -> str:
        return PITCH_CLASSES[self.tonic] + ("" if self.mode == "major" else "m")


def degree_to_pitch(degree: int, tonic: int, mode: str = "major") -> int:
    """Scale degree (0 = tonic, 7 = tonic an octave up,
    may be negative) -> MIDI pitch. Chapter 21."""
    scale = SCALES[mode]
    octave, step = divmod(degree, 7)
    base = 60 + (tonic if tonic < 6 else tonic - 12)  # tonic near middle C
    return base + 12 * octave + scale[step]


def generate_melody(
    tonic: int | None = None,
    mode: str | None = None,
    n_bars: int = 4,
    rng: random.Random | None = None,
    seed: int | None = None,
) -> Melody:
    """One seeded melody of ``n_bars`` 4/4 bars. Explained in chapter 21.

    Rules: the pitch walks a Markov chain over scale degrees (mostly steps of one degree, reflected
    inside degrees -3..11); each bar takes a rhythm from :data:`RHYTHMS`; bar 3 repeats bar 1 half
    of the time (a motif); the last bar ends on the tonic with a long note.
    """
    rng = rng or random.Random(seed)
    tonic = rng.randrange(12) if tonic is None else tonic
    mode = rng.choice(["major", "minor"]) if mode is None else mode
    steps, weights = zip(*STEP_PROBS.items())
    degree = rng.choice([0, 2, 4])
    bars = []
    for b in range(n_bars):
        if b == 2 and rng.random() < 0.5:
            bars.append(list(bars[0]))
            continue
        rhythm = [4, 4] if b == n_bars - 1 else rng.choice(RHYTHMS)
        bar = []
        for i, dur in enumerate(rhythm):
            if b == n_bars - 1 and i == len(rhythm) - 1:
                degree = 7 if degree > 4 else 0  # end on the tonic
            bar.append((degree, dur))
            step = rng.choices(steps, weights)[0]
            degree = degree + step if -3 <= degree + step <= 11 else degree - step
        bars.append(bar)
    notes = [(degree_to_pitch(d, tonic, mode), dur) for bar in bars for d, dur in bar]
    return Melody(notes, tonic, mode)


def melody_corpus(n: int, n_bars: int = 4, seed: int = 0, tonics=None, modes=None) -> list[Melody]:
    """``n`` seeded melodies; keys drawn from ``tonics`` (pitch classes; all 12 by default) and
    ``modes`` (["major", "minor"] by default). Chapter 21."""
    rng = random.Random(seed)
    tonics = list(range(12)) if tonics is None else list(tonics)
    modes = ["major", "minor"] if modes is None else list(modes)
    return [
        generate_melody(rng.choice(tonics), rng.choice(modes), n_bars=n_bars, rng=rng)
        for _ in range(n)
    ]


class MusicTokenizer:
    """Pitch/duration tokens. Explained in chapter 21.

    A melody becomes ``<bos> K:<key> P<pitch> D<dur> P<pitch> D<dur> ... <eos>``; a bar line ``|``
    is inserted every 8 eighths so that the model sees the metre. ids: 0 <pad>, 1 <bos>, 2 <eos>.
    """

    def __init__(self):
        keys = [
            f"K:{pc}{'' if m == 'major' else 'm'}"
            for m in ("major", "minor")
            for pc in PITCH_CLASSES
        ]
        self.itos = (
            ["<pad>", "<bos>", "<eos>", "|"]
            + keys
            + [f"P{p}" for p in range(LOW, HIGH + 1)]
            + [f"D{d}" for d in DURATIONS]
        )
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.bar_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def key_token(self, tonic: int, mode: str) -> int:
        return self.stoi[f"K:{PITCH_CLASSES[tonic]}{'' if mode == 'major' else 'm'}"]

    def encode(self, melody: Melody, eos: bool = True) -> list[int]:
        """Melody -> token ids (list of int)."""
        ids = [self.bos_id, self.key_token(melody.tonic, melody.mode)]
        t = 0
        for pitch, dur in melody.notes:
            if t and t % BAR_LEN == 0:
                ids.append(self.bar_id)
            ids += [self.stoi[f"P{min(max(pitch, LOW), HIGH)}"], self.stoi[f"D{dur}"]]
            t += dur
        return ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> Melody:
        """Token ids -> Melody; stops at <eos>, skips tokens out of place (a pitch not followed by a
        duration), reads the key from the first key token (C major if none)."""
        toks = [self.itos[int(i)] for i in ids]
        tonic, mode, notes, pitch = 0, "major", [], None
        seen_key = False
        for tok in toks:
            if tok == "<eos>" and notes:
                break
            if tok.startswith("K:") and not seen_key:
                name = tok[2:]
                mode = "minor" if name.endswith("m") else "major"
                tonic, seen_key = PITCH_CLASSES.index(name.rstrip("m")), True
            elif tok.startswith("P"):
                pitch = int(tok[1:])
            elif tok.startswith("D") and pitch is not None:
                notes.append((pitch, int(tok[1:])))
                pitch = None
        return Melody(notes, tonic, mode)


# --- statistics -----------------------------------------------------------------------------


def in_key_ratio(melody: Melody, tonic: int | None = None, mode: str | None = None) -> float:
    """Share of notes whose pitch class is in the scale (the melody's own key by default)."""
    tonic = melody.tonic if tonic is None else tonic
    scale = {(tonic + s) % 12 for s in SCALES[mode or melody.mode]}
    return sum(p % 12 in scale for p, _ in melody.notes) / max(1, len(melody.notes))


def intervals(melody: Melody) -> list[int]:
    """Signed semitone steps between consecutive notes."""
    pitches = [p for p, _ in melody.notes]
    return [b - a for a, b in zip(pitches, pitches[1:])]


def interval_histogram(melodies, max_abs: int = 12) -> np.ndarray:
    """Normalised histogram over intervals -max_abs..max_abs (clipped): shape (2*max_abs+1,)."""
    h = np.zeros(2 * max_abs + 1)
    for m in melodies:
        for i in intervals(m):
            h[max(-max_abs, min(max_abs, i)) + max_abs] += 1
    return h / max(1.0, h.sum())


def pitch_range(melody: Melody) -> int:
    """Highest minus lowest pitch in semitones (0 for an empty melody)."""
    pitches = [p for p, _ in melody.notes]
    return max(pitches) - min(pitches) if pitches else 0


def repetition(melody: Melody, n: int = 3) -> float:
    """Share of interval n-grams that occurred earlier in the melody (motif reuse), in [0, 1]."""
    iv = intervals(melody)
    grams = [tuple(iv[i : i + n]) for i in range(len(iv) - n + 1)]
    if not grams:
        return 0.0
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def melody_stats(melodies) -> dict:
    """Mean statistics of a list of melodies: notes, in_key, range, repetition, mean |interval|,
    share of steps (|interval| <= 2), share ending on the tonic. Chapter 21."""
    ms = [m for m in melodies if m.notes]
    absiv = [abs(i) for m in ms for i in intervals(m)]
    return {
        "melodies": len(ms),
        "notes": float(np.mean([len(m.notes) for m in ms])) if ms else 0.0,
        "in_key": float(np.mean([in_key_ratio(m) for m in ms])) if ms else 0.0,
        "range": float(np.mean([pitch_range(m) for m in ms])) if ms else 0.0,
        "repetition": float(np.mean([repetition(m) for m in ms])) if ms else 0.0,
        "mean_abs_interval": float(np.mean(absiv)) if absiv else 0.0,
        "steps": float(np.mean([a <= 2 for a in absiv])) if absiv else 0.0,
        "ends_on_tonic": float(np.mean([m.notes[-1][0] % 12 == m.tonic for m in ms]))
        if ms
        else 0.0,
    }


# --- sound and pictures ---------------------------------------------------------------------


def midi_to_hz(pitch: float) -> float:
    """Equal temperament: A4 (MIDI 69) = 440 Hz, f = 440 * 2**((p - 69) / 12)."""
    return 440.0 * 2 ** ((pitch - 69) / 12)


def synthesize(
    melody: Melody, bpm: float = 120, sr: int = 16000, harmonics=(1.0, 0.5, 0.25)
) -> np.ndarray:
    """Melody -> mono float32 waveform in [-1, 1], shape (samples,), for IPython.display.Audio.

    Each note is a sum of sine harmonics with a short attack and an exponential decay. Chapter 21.
    """
    eighth = 60.0 / bpm / 2
    total = sum(d for _, d in melody.notes) * eighth
    out = np.zeros(int(math.ceil(total * sr)) + 1, dtype=np.float64)
    t0 = 0.0
    for pitch, dur in melody.notes:
        n = int(dur * eighth * sr)
        t = np.arange(n) / sr
        f = midi_to_hz(pitch)
        tone = sum(a * np.sin(2 * np.pi * f * (k + 1) * t) for k, a in enumerate(harmonics))
        env = (
            np.minimum(1.0, t / 0.01)
            * np.exp(-3.0 * t)
            * np.minimum(1.0, (n - np.arange(n)) / (0.01 * sr))
        )
        start = int(t0 * sr)
        out[start : start + n] += tone * env
        t0 += dur * eighth
    peak = np.abs(out).max()
    return (out / peak * 0.8 if peak > 0 else out).astype(np.float32)


def piano_roll(melody: Melody, low: int = LOW, high: int = HIGH) -> np.ndarray:
    """Binary piano roll, shape (high - low + 1, total
    eighths): row = pitch - low, column = time."""
    total = sum(d for _, d in melody.notes)
    roll = np.zeros((high - low + 1, total))
    t = 0
    for p, d in melody.notes:
        if low <= p <= high:
            roll[p - low, t : t + d] = 1
        t += d
    return roll


def plot_piano_rolls(melodies, titles=None, ncols: int = 2, figsize_per=(4.2, 2.2)):
    """Static small multiples: one piano roll per melody,
    in-key notes blue, out-of-key red. Chapter 21."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(melodies)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(figsize_per[0] * ncols, figsize_per[1] * nrows), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        m = melodies[k]
        scale = {(m.tonic + s) % 12 for s in SCALES[m.mode]}
        t = 0
        for p, d in m.notes:
            ax.add_patch(
                Rectangle(
                    (t, p - 0.4), d - 0.1, 0.8, color="tab:blue" if p % 12 in scale else "tab:red"
                )
            )
            t += d
        pitches = [p for p, _ in m.notes] or [60]
        ax.set_xlim(0, max(t, BAR_LEN * 4))
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
        for x in range(0, max(t, 1) + 1, BAR_LEN):
            ax.axvline(x, color="0.8", lw=0.8)
        ax.set_title(titles[k] if titles else m.key_name, fontsize=9)
        ax.set_xlabel("time (eighth notes)", fontsize=8)
        ax.set_ylabel("MIDI pitch", fontsize=8)
    fig.tight_layout()
    return fig
