"""A minimal chat loop over a base GPT: a prompt template, history that fits the window. Chapter 23.

A base language model only continues text. A chat system wraps it: each turn is written into a
**prompt template** (提示模板) (``User: ...`` / ``Assistant: ...``), the model continues after
``Assistant:``, and the reply is cut where the model starts writing the next ``User:`` line.
Instruction tuning and RLHF (chapter 23) are what make a model answer instead of merely continue;
this module is only the plumbing, and it works with any lmkit GPT and tokenizer. A tuned model
(``chat-gpt``) ends its reply with the template's end-of-turn token, and generation stops there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmkit.data.instructions import ChatTemplate
from lmkit.generate import generate
from lmkit.nn import device_of

__all__ = ["ChatSession", "ChatTemplate", "contains_answer", "cut_reply", "end_of_turn_id"]


def end_of_turn_id(tokenizer, template: ChatTemplate) -> int | None:
    """The token id of the template's end-of-turn marker, or None when the tokenizer has no single
    token for it (a character tokenizer spells it out). Chapter 23."""
    ids = tokenizer.encode(template.end_of_turn) if template.end_of_turn else []
    return ids[0] if len(ids) == 1 else None


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
        eos = end_of_turn_id(self.tokenizer, self.template)
        out = generate(
            self.model,
            ids,
            self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=seed,
            eos_id=eos,
        )
        new = out[0, ids.size(1) :].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        text = self.tokenizer.decode(new)
        reply = cut_reply(text, self.template.stop_strings())
        self.history.append((message, reply))
        return reply

    def reset(self) -> None:
        self.history.clear()


def contains_answer(reply: str, answers: list[str]) -> bool:
    """Whether any accepted answer string occurs in the reply (case-insensitive). Chapter 23."""
    low = reply.lower()
    return any(a.lower() in low for a in answers)
