"""lmkit.apps.chat: the prompt template, reply cutting,
history that fits the window, reproducibility."""

import torch

from lmkit.apps.chat import ChatSession, ChatTemplate, contains_answer, cut_reply
from lmkit.data import CharTokenizer
from lmkit.models import GPT, GPTConfig


def _tiny(block_size=64):
    tok = CharTokenizer.from_text(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,?:\n", unk="?"
    )
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    return model, tok


def test_template_renders_turns():
    t = ChatTemplate(system="S")
    assert (
        t.render([("hi", "hello")], "how?")
        == "S\nUser: hi\nAssistant: hello<|endoftext|>\nUser: how?\nAssistant:"
    )
    assert ChatTemplate(system="S", end_of_turn="").render([("a", "b")], "c") == (
        "S\nUser: a\nAssistant: b\nUser: c\nAssistant:"
    )
    assert ChatTemplate(system="").render([], "x") == "User: x\nAssistant:"


def test_cut_reply():
    stops = ChatTemplate().stop_strings()
    assert cut_reply(" Fine.\nUser: more", stops) == "Fine."
    assert cut_reply(" a\n\nb", stops) == "a"
    assert cut_reply(" no stop", stops) == "no stop"


def test_session_reproducible_and_history():
    model, tok = _tiny()
    a = ChatSession(model, tok, template=ChatTemplate(system=""), max_new_tokens=10, seed=1)
    b = ChatSession(model, tok, template=ChatTemplate(system=""), max_new_tokens=10, seed=1)
    ra, rb = a.send("hi"), b.send("hi")
    assert ra == rb and isinstance(ra, str)
    a.send("more")
    assert len(a.history) == 2 and a.history[0] == ("hi", ra)
    a.reset()
    assert a.history == []


def test_prompt_fits_the_window():
    model, tok = _tiny(block_size=64)
    s = ChatSession(model, tok, template=ChatTemplate(system=""), max_new_tokens=16, seed=0)
    s.history = [("x" * 20, "y" * 20)] * 5
    p = s.prompt_for("question")
    assert len(tok.encode(p)) <= 64 - 16 and p.endswith("User: question\nAssistant:")
    p2 = s.prompt_for("z" * 100)
    assert len(tok.encode(p2)) == 48 and p2.endswith("Assistant:")


def test_contains_answer():
    assert contains_answer("It is a TUPLE.", ["tuple"]) and not contains_answer(
        "a list", ["tuple", "dict"]
    )
