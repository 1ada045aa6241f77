"""What one row of a user's file means: a conversation (turns with roles) or plain text, by the file's format.

    messages         {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}  OpenAI, TRL
    sharegpt         {"conversations": [{"from": "system" | "human" | "gpt", "value": str}, ...]}
    alpaca           {"instruction": str, "input": str (optional, may be empty), "output": str}
    prompt_response  {data.prompt_column: str, data.response_column: str}       one user turn, one assistant turn
    text             {data.text_column: str}                                    plain text, loss on every token

`data.format=auto` picks the first of these whose columns the file has. A row that does not fit its format
raises `BadRow` with what is wrong and the fix; the loader names the file and row and counts it (no tokenizer is
needed here, so bad data fails before any weight loads).

    fmt = detect(columns, cfg.data)            # "messages"
    turns = parse(row, fmt, cfg.data)          # [Turn("user", "Hi"), Turn("assistant", "Hello!")]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import DataConfig
from ..errors import UserError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant"}
"""ShareGPT's `from` names as they occur in published ShareGPT-style datasets, mapped to chat roles."""


class BadRow(ValueError):
    """One row that does not fit its format; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


Parsed = list[Turn] | str
"""A conversation, or plain text (format `text`)."""


def columns_of(fmt: str, d: DataConfig) -> tuple[str, ...]:
    """The columns a format reads (its required ones; alpaca's `input` is optional)."""
    return {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
            "prompt_response": (d.prompt_column, d.response_column), "text": (d.text_column,)}[fmt]


def detect(columns: set[str], d: DataConfig, path: str) -> str:
    """The format `d.format` names (its columns checked), or for `auto` the first whose columns the file has.

    Raises:
        UserError: the named format's columns are missing, or no format fits the columns.
    """
    names = [d.format] if d.format != "auto" else ["messages", "sharegpt", "alpaca", "prompt_response", "text"]
    for fmt in names:
        if set(columns_of(fmt, d)) <= columns:
            return fmt
    if d.format != "auto":
        raise UserError(f"data.format={d.format}: '{path}' has no column(s) {list(columns_of(d.format, d))}; its "
                        f"columns are {sorted(columns)}; set data.format=auto or name the columns")
    raise UserError(
        f"data: columns {sorted(columns)} of '{path}' fit no format: messages (a 'messages' column), sharegpt "
        f"('conversations'), alpaca ('instruction' + 'output'), data.prompt_column='{d.prompt_column}' + "
        f"data.response_column='{d.response_column}', or data.text_column='{d.text_column}'; set the columns to "
        f"the names in your file")


def parse(row: dict[str, Any], fmt: str, d: DataConfig) -> Parsed:
    """The conversation (or text) a row holds. Raises `BadRow`."""
    if fmt == "text":
        return _text(row.get(d.text_column), d.text_column)
    if fmt == "prompt_response":
        return [Turn("user", _text(row.get(d.prompt_column), d.prompt_column)),
                Turn("assistant", _text(row.get(d.response_column), d.response_column))]
    if fmt == "alpaca":
        return _alpaca(row)
    turns = _sharegpt(row.get("conversations")) if fmt == "sharegpt" else _messages(row.get("messages"))
    return _checked(turns, fmt)


def _text(value: Any, column: str) -> str:
    """Text, or a number as its text; anything else (a list, an object, a missing value) would be trained as its
    Python repr, so it is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    kind = "missing" if value is None else type(value).__name__
    raise BadRow(f"column '{column}' holds {kind}, not text; give it text")


def _alpaca(row: dict[str, Any]) -> list[Turn]:
    """Instruction and input (when not empty) both in the user turn, a blank line apart, as Alpaca renders them."""
    instruction, extra = _text(row.get("instruction"), "instruction"), row.get("input")
    user = instruction if extra in (None, "") else f"{instruction}\n\n{_text(extra, 'input')}"
    return [Turn("user", user), Turn("assistant", _text(row.get("output"), "output"))]


def _messages(value: Any) -> list[Turn]:
    turns = []
    for i, m in enumerate(_turn_list(value, "messages")):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRow(f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        turns.append(Turn(role, _content(content, f"messages[{i}].content")))
    return turns


def _sharegpt(value: Any) -> list[Turn]:
    turns = []
    for i, m in enumerate(_turn_list(value, "conversations")):
        source = m.get("from")
        if source not in SHAREGPT_ROLES:
            raise BadRow(f"conversations[{i}] is from {source!r}; use one of {', '.join(SHAREGPT_ROLES)}")
        turns.append(Turn(SHAREGPT_ROLES[source], _content(m.get("value"), f"conversations[{i}].value")))
    return turns


def _turn_list(value: Any, column: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        kind = "missing" if value is None else type(value).__name__
        raise BadRow(f"'{column}' must be a list of turns (objects), got {kind}")
    if not value:
        raise BadRow(f"'{column}' is an empty conversation; give it at least a user and an assistant turn")
    return value


def _content(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else type(value).__name__
        raise BadRow(f"{where} is {kind}, not text (content parts and tool calls are not supported); give it text")
    return value


def _checked(turns: list[Turn], fmt: str) -> list[Turn]:
    if not any(t.role == "assistant" for t in turns):
        raise BadRow(f"the conversation has no assistant turn, so nothing to learn from; add one or drop the row "
                     f"({fmt})")
    return turns
