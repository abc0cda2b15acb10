"""Write the instruction-tuning data of chapter 23 into book/data/chat (train.jsonl, val.jsonl).

    python scripts/build_chat_data.py

The examples come from this Python's documentation topics and standard-library docstrings
(lmkit.data.instructions), so rebuilding with another Python version changes them; the shipped
files are what chat-gpt was tuned on. The data card is book/data/chat/README.md.
"""

from pathlib import Path

from lmkit.data.instructions import write_instructions

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "book" / "data" / "chat"
    print(write_instructions(out), "examples written to", out)
