"""What clients send and get: the book's ``/generate`` and the OpenAI API. Explained in chapter 13.

The request models are built for one server (:func:`request_models`), so that its limits appear in
the OpenAPI schema (``/openapi.json``) as ranges: ``max_tokens <= 256``, a prompt of at most
``max_prompt_chars`` characters, and, for a character tokenizer, the characters it knows (a regex
``pattern``; the server checks them itself, so that a 422 names the offending characters).

Every model is strict: unknown fields, wrong types (``"1"`` is not a number), NaN and infinity are
refused with a 422 naming the field. OpenAI fields that this server does not implement (penalties,
``logit_bias``, tools, ...) are refused too, by name, unless sent with the value that changes
nothing (``presence_penalty: 0``), so that a client never silently gets something else than it
asked for.

The chat endpoint turns messages into one prompt with :class:`ChatTemplate`; the shipped models are
base models (never tuned on dialogues), so the template is plain text that they can continue.
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from lmkit.serve.limits import (
    MAX_OPENAI_TEMPERATURE,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    ServerLimits,
)

MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 64
MAX_CHOICES = 8  # n
MAX_LOGPROBS = 5  # alternatives per token (OpenAI's limit for completions)
MAX_MESSAGES = 64
MAX_SEED = 2**63 - 1

# OpenAI fields not implemented here, and the values that change nothing (accepted, ignored).
_COMMON_UNSUPPORTED = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}
UNSUPPORTED_COMPLETION = {
    **_COMMON_UNSUPPORTED,
    "best_of": (1,),
    "echo": (False,),
    "suffix": (),
}
UNSUPPORTED_CHAT = {
    **_COMMON_UNSUPPORTED,
    "logprobs": (False,),
    "top_logprobs": (),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "store": (False,),
    "metadata": (),
    "service_tier": ("auto", "default"),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
}


@dataclass(frozen=True)
class ChatTemplate:
    """How chat messages become the prompt of a base model. Explained in chapter 13.

    The default renders ``[{"role": "system", ...}, {"role": "user", "content": "Hi"}]`` as::

        You are terse.          (each system or developer message, then a blank line)

        User: Hi
        Assistant:_             (a trailing space; the model continues the reply here)

    with one line per user or assistant message. The reply ends at ``max_tokens`` or where the
    model starts the next turn: the template's ``stop`` strings are added to the request's own.
    Every character of the template must be known to the tokenizer (the shipped char-level
    model's vocabulary has them).
    """

    user: str = "User: "
    assistant: str = "Assistant: "
    system_end: str = "\n\n"
    turn_end: str = "\n"
    stop: tuple[str, ...] = ("\nUser:",)

    def render(self, messages: list[tuple[str, str]]) -> str:
        """``[(role, content), ...]`` -> the prompt, ending where the assistant's reply begins."""
        parts = []
        for role, content in messages:
            if role in ("system", "developer"):
                parts.append(content + self.system_end)
            else:
                prefix = self.user if role == "user" else self.assistant
                parts.append(prefix + content + self.turn_end)
        return "".join(parts) + self.assistant


def vocabulary_pattern(tokenizer, empty_ok: bool = False) -> str | None:
    """A regex of the texts a character tokenizer (without ``unk``) accepts, for the schema."""
    chars = getattr(tokenizer, "chars", None)
    if (
        getattr(tokenizer, "kind", None) != "char"
        or getattr(tokenizer, "unk", None) is not None
        or not chars
    ):
        return None
    body = "".join("\\" + c if c in "\\[]^-" else c for c in chars)
    return "^[" + body + ("]*$" if empty_ok else "]+$")


def _is_noop(value: Any, allowed: tuple) -> bool:
    if value is None:
        return True
    return any(type(value) is type(a) and value == a for a in allowed)


def _refuse_unsupported(data: Any, unsupported: dict[str, tuple]) -> Any:
    """Before validation: a 422 naming an unimplemented OpenAI field that would change the
    answer; the same field with a value that changes nothing is dropped."""
    from pydantic_core import PydanticCustomError

    if not isinstance(data, dict):
        return data
    for key, allowed in unsupported.items():
        if key in data and not _is_noop(data[key], allowed):
            shown = ", ".join(json.dumps(a) for a in (None, *allowed))
            raise PydanticCustomError(
                "unsupported_field",
                "not supported by this server; leave it out (or send {noop})",
                {"field": key, "noop": shown},
            )
    return {k: v for k, v in data.items() if k not in unsupported}


def request_models(limits: ServerLimits, tokenizer, max_prompt_tokens: int):
    """The pydantic models of one server's requests and answers, as a namespace with
    ``Generate``, ``GenerateResponse``, ``Completion``, ``Chat``, ``Error`` and the OpenAI
    answers (for the schema)."""
    import types

    ns = types.SimpleNamespace()
    ns.Generate, ns.GenerateResponse = _generate_models(limits, tokenizer, max_prompt_tokens)
    ns.Completion, ns.Chat = _openai_requests(limits, tokenizer, max_prompt_tokens)
    ns.Error = _error_model()
    ns.CompletionResponse, ns.ChatResponse, ns.ModelList = _answer_models()
    return ns


def _generate_models(limits: ServerLimits, tokenizer, max_prompt_tokens: int):
    """``POST /generate``: the book's first, minimal API (chapter 13's opening example)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    pattern = vocabulary_pattern(tokenizer)

    class GenerateRequest(BaseModel):
        """What to generate. Unknown fields, wrong types
        and out-of-range values are rejected (422)."""

        model_config = ConfigDict(extra="forbid", strict=True)

        prompt: str = Field(
            min_length=1,
            max_length=limits.max_prompt_chars,
            description=f"Text to continue: 1 to {limits.max_prompt_chars} characters and at most "
            f"{max_prompt_tokens} tokens, every character known to the tokenizer.",
            json_schema_extra={"pattern": pattern} if pattern else None,
        )
        max_new_tokens: int = Field(min(32, limits.max_new_tokens), ge=0, le=limits.max_new_tokens)
        temperature: float = Field(
            1.0,
            ge=0.0,
            le=MAX_TEMPERATURE,
            allow_inf_nan=False,
            description=f"0 = greedy decoding; otherwise at least {MIN_TEMPERATURE}.",
        )
        top_k: int | None = Field(
            None, ge=1, le=tokenizer.vocab_size, description="Keep the k most likely tokens."
        )
        top_p: float | None = Field(
            None, ge=MIN_TOP_P, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass."
        )
        seed: int | None = Field(
            None, ge=0, le=MAX_SEED, description="Random seed; drawn and returned if missing."
        )

        @field_validator("temperature")
        @classmethod
        def _not_tiny(cls, t: float) -> float:
            return _not_tiny_temperature(t)

    class GenerateResponse(BaseModel):
        completion: str = Field(description="The generated text only.")
        text: str = Field(description="Prompt and completion, decoded together.")
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int
        elapsed_ms: float
        seed: int = Field(description="The seed used; send it back to reproduce this answer.")

    return GenerateRequest, GenerateResponse


def _not_tiny_temperature(t: float) -> float:
    if 0.0 < t < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {t}")
    return t


def _sampling_base(limits: ServerLimits, tokenizer):
    """Fields shared by ``/v1/completions`` and ``/v1/chat/completions``."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    stop_str = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        include_usage: bool = Field(False, description="A last chunk with the token counts.")

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        model: str = Field(
            min_length=1, max_length=200, description="The model's id, as /v1/models lists it."
        )
        temperature: float | None = Field(
            None,
            ge=0.0,
            le=MAX_OPENAI_TEMPERATURE,
            allow_inf_nan=False,
            description=f"Default 1; 0 = greedy decoding, otherwise at least {MIN_TEMPERATURE}.",
        )
        top_p: float | None = Field(
            None, ge=MIN_TOP_P, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass."
        )
        top_k: int | None = Field(
            None,
            ge=1,
            le=tokenizer.vocab_size,
            description="Keep the k most likely tokens (an extension, as in vLLM).",
        )
        n: int | None = Field(
            None,
            ge=1,
            le=min(MAX_CHOICES, limits.max_queue),
            description="Choices to generate; choice i samples with seed + i.",
        )
        stop: stop_str | Annotated[list[stop_str], Field(max_length=MAX_STOP)] | None = Field(
            None, description=f"Up to {MAX_STOP} strings that end the completion (not included)."
        )
        seed: int | None = Field(
            None, ge=0, le=MAX_SEED, description="Random seed; drawn and returned if missing."
        )
        stream: bool | None = Field(None, description="Server-sent events, one chunk per step.")
        stream_options: StreamOptions | None = None
        user: str | None = Field(None, max_length=256, description="Accepted and not recorded.")

        @field_validator("temperature")
        @classmethod
        def _not_tiny(cls, t):
            return t if t is None else _not_tiny_temperature(t)

        @model_validator(mode="after")
        def _options_need_a_stream(self):
            if self.stream_options is not None and not self.stream:
                raise ValueError("stream_options is only allowed with stream: true")
            return self

    return Sampling


def _openai_requests(limits: ServerLimits, tokenizer, max_prompt_tokens: int):
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    Sampling = _sampling_base(limits, tokenizer)
    pattern, content_pattern = vocabulary_pattern(tokenizer), vocabulary_pattern(tokenizer, True)

    class CompletionRequest(Sampling):
        """``POST /v1/completions``: continue a prompt (OpenAI's completions API)."""

        prompt: str = Field(
            min_length=1,
            max_length=limits.max_prompt_chars,
            description=f"Text to continue: at most {limits.max_prompt_chars} characters and "
            f"{max_prompt_tokens} tokens, every character known to the tokenizer.",
            json_schema_extra={"pattern": pattern} if pattern else None,
        )
        max_tokens: int | None = Field(
            None, ge=0, le=limits.max_new_tokens, description="New tokens at most (default 16)."
        )
        logprobs: int | None = Field(
            None,
            ge=0,
            le=MAX_LOGPROBS,
            description="Log-probability of each token and of this many alternatives.",
        )

        @model_validator(mode="before")
        @classmethod
        def _unsupported(cls, data):
            return _refuse_unsupported(data, UNSUPPORTED_COMPLETION)

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        role: Literal["system", "developer", "user", "assistant"]
        content: str = Field(
            max_length=limits.max_prompt_chars,
            json_schema_extra={"pattern": content_pattern} if content_pattern else None,
        )

    class ChatRequest(Sampling):
        """``POST /v1/chat/completions``: answer a conversation, through the chat template."""

        messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
        max_tokens: int | None = Field(
            None, ge=0, le=limits.max_new_tokens, description="New tokens at most (the limit)."
        )
        max_completion_tokens: int | None = Field(
            None, ge=0, le=limits.max_new_tokens, description="The newer name of max_tokens."
        )

        @model_validator(mode="before")
        @classmethod
        def _unsupported(cls, data):
            return _refuse_unsupported(data, UNSUPPORTED_CHAT)

    return CompletionRequest, ChatRequest


def _error_model():
    """Every error answer (lmkit.serve.transport.error_body), for the OpenAPI schema."""
    from pydantic import BaseModel, Field

    class ErrorDetail(BaseModel):
        message: str
        type: str
        param: str | None = None
        code: int | None = None

    class ErrorResponse(BaseModel):
        detail: str = Field(description="What is wrong and how to fix it.")
        error: ErrorDetail | None = Field(None, description="The same, as the OpenAI API says it.")
        errors: list[dict] | None = None

    return ErrorResponse


def _answer_models():
    """The OpenAI answers, for the OpenAPI schema (the server writes them as plain JSON)."""
    from pydantic import BaseModel, Field

    class Usage(BaseModel):
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int

    class CompletionChoice(BaseModel):
        index: int
        text: str
        logprobs: dict | None = None
        finish_reason: Literal["stop", "length"]

    class CompletionResponse(BaseModel):
        id: str
        object: Literal["text_completion"]
        created: int
        model: str
        choices: list[CompletionChoice]
        usage: Usage
        seed: int = Field(description="The seed used (choice i used seed + i).")

    class AssistantMessage(BaseModel):
        role: Literal["assistant"]
        content: str

    class ChatChoice(BaseModel):
        index: int
        message: AssistantMessage
        logprobs: None = None
        finish_reason: Literal["stop", "length"]

    class ChatResponse(BaseModel):
        id: str
        object: Literal["chat.completion"]
        created: int
        model: str
        choices: list[ChatChoice]
        usage: Usage
        seed: int

    class ModelCard(BaseModel):
        id: str
        object: Literal["model"]
        created: int
        owned_by: str

    class ModelList(BaseModel):
        object: Literal["list"]
        data: list[ModelCard]

    return CompletionResponse, ChatResponse, ModelList
