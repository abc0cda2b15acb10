"""The instruction-tuning data of chapter 23 (lmkit.data.instructions) and its chat template."""

import json
import sys

import pytest

from lmkit.assets import book_data
from lmkit.data import load_splits
from lmkit.data.instructions import (
    END_OF_TURN,
    REFUSAL,
    ChatTemplate,
    _sentences,
    build_instructions,
    load_instructions,
    pydoc_sections,
)

CARD = book_data("chat/README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shipped():
    return {split: load_instructions(split) for split in ("train", "val")}


@pytest.mark.skipif(
    f"Python {sys.version_info.major}.{sys.version_info.minor}" not in CARD,
    reason="the shipped files were built from another Python's documentation and docstrings",
)
def test_the_shipped_files_are_what_the_builder_writes(shipped):
    assert build_instructions() == shipped


def test_train_and_val_share_no_source_and_every_kind_is_present(shipped):
    sources = {split: {e["source"] for e in rows} for split, rows in shipped.items()}
    assert not sources["train"] & sources["val"]
    assert {e["kind"] for e in shipped["train"]} == {"fact", "reading", "refusal"}
    assert len({e["id"] for rows in shipped.values() for e in rows}) == sum(
        len(rows) for rows in shipped.values()
    )


def test_reading_examples_answer_from_their_context_and_refusals_refuse(shipped):
    rows = shipped["train"] + shipped["val"]
    reading = [e for e in rows if e["kind"] == "reading"]
    assert reading and all(e["answer"] in e["context"] for e in reading)
    assert all(e["context"] is None for e in rows if e["kind"] != "reading")
    assert all(e["answer"] == REFUSAL for e in rows if e["kind"] == "refusal")
    assert all(e["answer"] != REFUSAL for e in rows if e["kind"] != "refusal")


def test_a_training_text_starts_with_the_prompt_the_chat_loop_sends():
    """Training and inference write the same prompt: tuning on one format and asking in another
    is the classic chat-template bug."""
    t = ChatTemplate()
    e = {
        "question": "What does len() do?",
        "answer": "Return the number of items.",
        "context": None,
    }
    text = t.example_text(e)
    assert text == t.render([], e["question"]) + " " + e["answer"] + END_OF_TURN
    with_context = t.example_text({**e, "context": "len(s) returns the length."})
    assert with_context.startswith("Context: len(s) returns the length.\nUser: What does len()")
    # history: each finished assistant turn ends with the end-of-turn marker
    assert t.render([("hi", "hello")], "bye").endswith(
        "User: hi\nAssistant: hello" + END_OF_TURN + "\nUser: bye\nAssistant:"
    )


def test_the_chat_corpus_is_the_shipped_examples_in_the_template(shipped):
    splits = load_splits("chat")
    t = ChatTemplate()
    assert splits["train"].count(END_OF_TURN) == len(shipped["train"])
    assert splits["val"].startswith(t.example_text(shipped["val"][0]))
    assert splits["test"] == ""


def testpydoc_sections_skip_grammar_and_code_and_keep_the_first_paragraph():
    topic = (
        'The "pass" statement\n********************\n\n   pass_stmt ::= "pass"\n\n'
        '"pass" is a null operation; nothing happens when it is executed.\nIt is useful as a '
        "placeholder.\n\nSecond paragraph.\n\nExamples\n========\n\n   >>> pass\n\n"
        "An example follows here.\n"
    )
    assert pydoc_sections(topic) == [
        (
            'The "pass" statement',
            '"pass" is a null operation; nothing happens when it is executed. It is useful as a '
            "placeholder.",
        ),
        ("Examples", "An example follows here."),
    ]


def test_sentences_cut_at_sentence_ends_within_the_budget():
    text = "First one. Second e.g. here. Third!  Fourth?"
    assert _sentences(text, 1) == "First one."
    assert _sentences(text, 3) == "First one. Second e.g. here. Third!"
    assert _sentences(text, 4, max_chars=20) == "First one."


def test_the_data_card_states_the_counts_of_the_shipped_files(shipped):
    for split, rows in shipped.items():
        assert f"{len(rows):,} {split}" in CARD.replace("**", ""), split
    assert json.dumps(REFUSAL)[1:-1] in CARD
