"""How temperature and top-p reshape a language model's next-token distribution. Chapter 12.

Two views of the same computation, as everywhere in ``lmkit``'s visualisations:

* :func:`generation_widget`: an ipywidgets panel (temperature and top-p sliders) that redraws the
  next-token distribution and a sampled continuation; its callback is :func:`render_state`, a pure
  function that the tests call directly.
* :func:`plot_distribution_grid`: the static small-multiples figure (rows: temperatures, columns:
  top-p values) that stands in for the widget in the static HTML book.

Explained in chapter 12.
"""

from __future__ import annotations

import torch

from lmkit.generate import generate
from lmkit.nn import device_of, eval_mode
from lmkit.sampling import filter_logits


def shaped_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Next-token probabilities after temperature, top-k
    and top-p: logits (V,) or (B, V) -> same shape.

    ``temperature == 0`` returns the greedy one-hot distribution. Explained in chapter 12.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    squeeze = logits.dim() == 1
    z = logits.float()[None] if squeeze else logits.float()
    if temperature == 0:
        p = torch.zeros_like(z).scatter(-1, z.argmax(-1, keepdim=True), 1.0)
    else:
        p = filter_logits(
            z / temperature, top_k, None if top_p is None or top_p >= 1 else top_p
        ).softmax(-1)
    return p[0] if squeeze else p


def entropy_bits(p: torch.Tensor) -> float:
    """Shannon entropy of a distribution p (V,), in bits (zeros contribute nothing). Chapter 12."""
    p = p.double()
    nz = p[p > 0]
    return float(-(nz * nz.log2()).sum())


@torch.no_grad()
def next_token_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    """The model's logits (V,) for the token after ``prompt`` (cropped to the context window)."""
    device = device_of(model)
    ids = torch.tensor(
        [tokenizer.encode(prompt)[-model.config.block_size :]], dtype=torch.long, device=device
    )
    with eval_mode(model):
        logits, _ = model(ids)
    return logits[0, -1].float().cpu()


def render_state(
    model,
    tokenizer,
    prompt: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
    n_show: int = 12,
    max_new_tokens: int = 60,
    seed: int = 0,
    logits: torch.Tensor | None = None,
) -> dict:
    """Everything the widget shows for one slider setting (the widget's callback, testable).

    Returns a dict: ``tokens`` (the ``n_show`` most likely next tokens, as text), ``probs`` (their
    shaped probabilities, list of floats), ``kept`` (how many tokens have non-zero probability),
    ``entropy_bits`` and ``sample`` (a continuation of ``prompt`` sampled with these settings and
    ``seed``). Explained in chapter 12.
    """
    if logits is None:
        logits = next_token_logits(model, tokenizer, prompt)
    p = shaped_probs(logits, temperature, top_p)
    order = torch.argsort(logits, descending=True)[:n_show]
    device = device_of(model)
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    out = generate(
        model,
        ids,
        max_new_tokens,
        temperature=temperature,
        top_p=None if top_p >= 1 else top_p,
        seed=seed,
    )
    return {
        "tokens": [tokenizer.decode([int(i)]) for i in order],
        "probs": [float(p[i]) for i in order],
        "kept": int((p > 0).sum()),
        "entropy_bits": entropy_bits(p),
        "sample": tokenizer.decode(out[0, ids.size(1) :].tolist()),
    }


def _show(tok: str) -> str:
    """A token as a visible label (spaces and newlines made visible)."""
    return tok.replace("\n", "\\n").replace(" ", "\u2423") or "''"


def _bar(ax, tokens, probs, title):
    ax.bar(range(len(probs)), probs, color="C0")
    ax.set_xticks(range(len(tokens)), [_show(t) for t in tokens], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)


def plot_distribution_grid(
    logits: torch.Tensor,
    labels,
    temperatures=(0.5, 1.0, 1.5),
    top_ps=(1.0, 0.9, 0.5),
    n_show: int = 10,
):
    """Static small multiples: next-token probabilities for every (temperature, top-p) pair.

    logits (V,); labels: the text of every token id (a list of length V, or a callable id -> str).
    Rows are temperatures, columns top-p values; each panel shows the ``n_show`` tokens that are
    most likely at temperature 1 (the ranking never changes with temperature). Returns the figure.
    Explained in chapter 12.
    """
    import matplotlib.pyplot as plt

    label = labels if callable(labels) else (lambda i: labels[i])
    order = torch.argsort(logits, descending=True)[:n_show]
    tokens = [label(int(i)) for i in order]
    fig, axes = plt.subplots(
        len(temperatures),
        len(top_ps),
        figsize=(3.2 * len(top_ps), 2.2 * len(temperatures)),
        sharey=True,
        squeeze=False,
    )
    for r, t in enumerate(temperatures):
        for c, tp in enumerate(top_ps):
            p = shaped_probs(logits, t, tp)
            kept = int((p > 0).sum())
            _bar(axes[r, c], tokens, p[order].tolist(), f"T={t:g}, top-p={tp:g} ({kept} kept)")
    fig.tight_layout()
    return fig


def generation_widget(
    model,
    tokenizer,
    prompt: str,
    temperature: float = 1.0,
    top_p: float = 1.0,
    n_show: int = 12,
    max_new_tokens: int = 60,
    seed: int = 0,
):
    """Temperature / top-p explorer (ipywidgets): bar chart of next-token probabilities + a sample.

    Returns the ``VBox``; its ``update(temperature, top_p)`` attribute is the callback (it returns
    :func:`render_state`'s dict), so notebooks and tests can drive it without a browser.
    Explained in chapter 12.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    logits = next_token_logits(model, tokenizer, prompt)
    t_slider = W.FloatSlider(
        value=temperature, min=0.0, max=2.0, step=0.05, description="temperature"
    )
    p_slider = W.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p")
    plot_out, text_out = W.Output(), W.HTML()

    def update(temperature: float, top_p: float) -> dict:
        state = render_state(
            model, tokenizer, prompt, temperature, top_p, n_show, max_new_tokens, seed, logits
        )
        with plot_out:
            plot_out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 2.6))
            _bar(
                ax,
                state["tokens"],
                state["probs"],
                f"T={temperature:g}, top-p={top_p:g}: {state['kept']} tokens kept, "
                f"entropy {state['entropy_bits']:.2f} bits",
            )
            plt.show()
        import html

        text_out.value = (
            f"<pre style='white-space:pre-wrap'><b>{html.escape(prompt)}</b>"
            f"{html.escape(state['sample'])}</pre>"
        )
        return state

    def on_change(_):
        update(t_slider.value, p_slider.value)

    t_slider.observe(on_change, names="value")
    p_slider.observe(on_change, names="value")
    box = W.VBox([W.HBox([t_slider, p_slider]), plot_out, text_out])
    box.update = update
    box.sliders = (t_slider, p_slider)
    update(temperature, top_p)
    return box
