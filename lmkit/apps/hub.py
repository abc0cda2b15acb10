"""Hub alternatives for chapters 18-20, used only when a notebook sets ``USE_HUB = True``.

They need internet the first time (then the Hugging Face cache). The offline defaults are the
book's own data: book/data/sentiment, :mod:`lmkit.data.tasks`, the standard-library corpus.
"""

from __future__ import annotations


def _records(ds, text_field: str, label_field: str, names) -> tuple[list[str], list[str]]:
    texts = [r[text_field] for r in ds]
    labels = [names[int(r[label_field])] for r in ds]
    return texts, labels


def load_hub_sentiment(name: str = "sst2", max_per_split: int | None = 2000, seed: int = 0) -> dict:
    """IMDB or SST-2 as {"train"|"val"|"test": (texts, labels)} with labels "negative"/"positive".

    SST-2's test labels are hidden, so its validation split is used as "test" and 10% of train as
    "val"; IMDB has no validation split, so 10% of train is held out. Chapter 18.
    """
    from datasets import load_dataset

    if name == "sst2":
        ds = load_dataset("stanfordnlp/sst2")
        text_field, train, test = "sentence", ds["train"], ds["validation"]
    elif name == "imdb":
        ds = load_dataset("stanfordnlp/imdb")
        text_field, train, test = "text", ds["train"], ds["test"]
    else:
        raise ValueError("name must be 'sst2' or 'imdb'")
    parts = train.train_test_split(test_size=0.1, seed=seed)
    out = {}
    for split, d in (("train", parts["train"]), ("val", parts["test"]), ("test", test)):
        d = d.shuffle(seed=seed)
        if max_per_split is not None:
            d = d.select(range(min(max_per_split, len(d))))
        out[split] = _records(d, text_field, "label", ["negative", "positive"])
    return out


def load_hub_parallel(
    name: str = "opus_books", pair: str = "en-fr", max_pairs: int | None = 20000, seed: int = 0
) -> dict:
    """A parallel corpus as {"train"|"val"|"test": [(source, target), ...]}. Chapter 19.

    ``opus_books`` (pairs such as "en-fr", "de-en"; only a train split, split here 80/10/10) or
    ``wmt19`` (``pair="zh-en"``: English source, Chinese target).
    """
    from datasets import load_dataset

    if name == "opus_books":
        ds = load_dataset("Helsinki-NLP/opus_books", pair)["train"]
    elif name == "wmt19":
        ds = load_dataset("wmt/wmt19", pair)["train"]
    else:
        raise ValueError("name must be 'opus_books' or 'wmt19'")
    ds = ds.shuffle(seed=seed)
    if max_pairs is not None:
        ds = ds.select(range(min(max_pairs, len(ds))))
    src, tgt = ("en", pair.replace("en", "").strip("-"))
    pairs = [(r["translation"][src], r["translation"][tgt]) for r in ds]
    n = len(pairs)
    a, b = int(0.8 * n), int(0.9 * n)
    return {"train": pairs[:a], "val": pairs[a:b], "test": pairs[b:]}


def load_hub_gpt2(name: str = "gpt2", device="cpu"):
    """A pretrained causal LM from the hub and its
    tokenizer (e.g. "gpt2"), for chapter 20's benchmark."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    return AutoModelForCausalLM.from_pretrained(name).to(device).eval(), tok


def hub_complete(
    model,
    tokenizer,
    prompt: str,
    n: int = 5,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[str]:
    """n sampled continuations of ``prompt`` from a
    transformers causal LM (text after the prompt)."""
    import torch

    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    out = model.generate(
        **ids,
        do_sample=True,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(o[ids["input_ids"].shape[1] :], skip_special_tokens=True) for o in out]
