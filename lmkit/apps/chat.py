"""A minimal chat loop over a base GPT: a prompt template, history that fits the window. Chapter 23.

A base language model only continues text. A chat system wraps it: each turn is written into a
**prompt template** (提示模板) (``User: ...`` / ``Assistant: ...``), the model continues after
``Assistant:``, and the reply is cut where the model starts writing the next ``User:`` line.
Instruction tuning and RLHF (chapter 23) are what make a model answer instead of merely continue;
this module is only the plumbing, and it works with any lmkit GPT and tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmkit.generate import generate
from lmkit.nn import device_of


@dataclass
class ChatTemplate:
    """How turns are written into one prompt string. Explained in chapter 23."""

    system: str = (
        "A conversation between a user and an assistant that answers questions about Python."
    )
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant: "
    separator: str = "\n"

    def render(self, history: list[tuple[str, str]], message: str) -> str:
        """The prompt for ``message`` after ``history`` [(user, assistant), ...], ending in the
        assistant prefix (with its trailing space removed so that the model writes the space)."""
        parts = [self.system] if self.system else []
        for user, assistant in history:
            parts.append(self.user_prefix + user)
            parts.append(self.assistant_prefix + assistant)
        parts.append(self.user_prefix + message)
        parts.append(self.assistant_prefix.rstrip())
        return self.separator.join(parts)

    def stop_strings(self) -> list[str]:
        """Where a reply ends: at the next turn marker (or a blank line)."""
        return [
            self.separator + self.user_prefix.strip(),
            self.separator + self.assistant_prefix.strip(),
            "\n\n",
        ]


def cut_reply(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop string, stripped. Chapter 23."""
    end = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            end = min(end, i)
    return text[:end].strip()


@dataclass
class ChatSession:
    """A conversation with a GPT: ``session.send("question") -> reply``. Explained in chapter 23.

    The history is kept as (user, assistant) pairs; before each turn the oldest pairs are
    dropped until prompt plus ``max_new_tokens`` fit the model's context window (``block_size``).
    ``seed`` makes each turn reproducible (turn t uses seed + t).
    """

    model: torch.nn.Module
    tokenizer: object
    template: ChatTemplate = field(default_factory=ChatTemplate)
    max_new_tokens: int = 80
    temperature: float = 0.8
    top_k: int | None = 20
    seed: int | None = 0
    history: list[tuple[str, str]] = field(default_factory=list)

    def prompt_for(self, message: str) -> str:
        """The prompt for the next turn, with as much history as fits the window."""
        budget = self.model.config.block_size - self.max_new_tokens
        if budget < 1:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} leaves no "
                f"room in a window of {self.model.config.block_size}"
            )
        history = list(self.history)
        while True:
            prompt = self.template.render(history, message)
            if len(self.tokenizer.encode(prompt)) <= budget or not history:
                break
            history.pop(0)
        ids = self.tokenizer.encode(prompt)
        if len(ids) > budget:  # even without history: keep the end (the message and the prefix)
            prompt = self.tokenizer.decode(ids[-budget:])
        return prompt

    @torch.no_grad()
    def send(self, message: str) -> str:
        """Generate the assistant's reply to ``message`` and add the turn to the history."""
        prompt = self.prompt_for(message)
        ids = torch.tensor(
            [self.tokenizer.encode(prompt)], dtype=torch.long, device=device_of(self.model)
        )
        seed = None if self.seed is None else self.seed + len(self.history)
        out = generate(
            self.model,
            ids,
            self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=seed,
        )
        text = self.tokenizer.decode(out[0, ids.size(1) :].tolist())
        reply = cut_reply(text, self.template.stop_strings())
        self.history.append((message, reply))
        return reply

    def reset(self) -> None:
        self.history.clear()


def contains_answer(reply: str, answers: list[str]) -> bool:
    """Whether any accepted answer string occurs in the reply (case-insensitive). Chapter 23."""
    low = reply.lower()
    return any(a.lower() in low for a in answers)
