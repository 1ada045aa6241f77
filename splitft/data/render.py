"""A conversation (or text) -> token ids and labels: which tokens carry loss, and how a long sample is cut.

Conversations are rendered with the tokenizer's chat template (or `data.chat_template`). A template with
`{% generation %}` markers says itself which tokens are the assistant's: transformers' assistant masks are used
(train_on=assistant). For every other template, which tokens belong to which turn comes from rendering growing
prefixes of the conversation and taking differences: the text an assistant turn adds after the generation
prompt is its content and its end-of-turn, exactly what the model emits at inference (the two agree on a
marked template, tested). The end-of-turn token (the tokenizer's eos) carries loss; whatever the template adds
after it (ChatML's "\\n") does not, and a sample ends after its last target token.

    ids, labels = render(turns, tokenizer, "assistant", template)     # labels: IGNORE where no loss
    ids, labels, cut = truncate(ids, labels, 128, "prompt_left")
"""

from __future__ import annotations

import re
from typing import Any

from ..loss import IGNORE
from .formats import BadRow, Parsed, Turn

MARKED = re.compile(r"\{%-?\s*generation\s*-?%\}")
"""A chat template's marker around the assistant's tokens (`{% generation %}`), which transformers reads."""

Segment = tuple[list[int], bool]
"""Token ids of one piece of the rendered sample and whether it is a training target."""


def render(parsed: Parsed, tokenizer: Any, train_on: str, template: str | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one sample. Raises `BadRow` when the chat template cannot render it."""
    eos = tokenizer.eos_token_id
    if isinstance(parsed, str):
        ids = tokenizer(parsed, add_special_tokens=True)["input_ids"] + ([eos] if eos is not None else [])
        return ids, list(ids)
    targets = _targets(parsed, train_on)
    chat_template = template if template is not None else getattr(tokenizer, "chat_template", None)
    if train_on == "assistant" and isinstance(chat_template, str) and MARKED.search(chat_template):
        ids, labels = _masked(parsed, tokenizer, template)
    else:
        segments = _templated(parsed, targets, tokenizer, template) if chat_template else \
            _plain(parsed, targets, tokenizer)
        ids = [i for seg, _ in segments for i in seg]
        labels = [i if target else IGNORE for seg, target in segments for i in seg]
    if train_on == "all":
        return ids, ids
    end = last_target(labels)[1]  # nothing learns from what follows
    return ids[:end], labels[:end]


def _masked(turns: list[Turn], tokenizer: Any, template: str | None) -> tuple[list[int], list[int]]:
    """transformers' own assistant masks, for a template that marks the assistant's tokens."""
    msgs = [{"role": t.role, "content": t.content} for t in turns]
    try:
        out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            chat_template=template)
    except Exception as e:  # as in _apply
        raise _template_failed(e) from None
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    return ids, [i if m else IGNORE for i, m in zip(ids, mask, strict=True)]


def _targets(turns: list[Turn], train_on: str) -> set[int]:
    """Indices of the turns whose tokens carry loss."""
    assistant = [i for i, t in enumerate(turns) if t.role == "assistant"]
    if train_on == "all":
        return set(range(len(turns)))
    return set(assistant[-1:] if train_on == "last_assistant" else assistant)


def _templated(turns: list[Turn], targets: set[int], tokenizer: Any, template: str | None) -> list[Segment]:
    """Segments from rendered prefixes: before each assistant turn the conversation so far with the generation
    prompt, after it the conversation including it; each rendering must extend the one before."""
    eos = tokenizer.eos_token_id
    msgs = [{"role": t.role, "content": t.content} for t in turns]
    segments: list[Segment] = []
    done = ""

    def take(text: str, target: bool) -> None:
        nonlocal done
        if not text.startswith(done):
            raise BadRow("the chat template renders this conversation so that a prefix of it is not a prefix of the "
                         "whole (its turns cannot be told apart); set data.chat_template to a template that "
                         "renders turn by turn")
        ids = tokenizer(text[len(done):], add_special_tokens=False)["input_ids"]
        if target and eos in ids:  # train up to the end-of-turn, not what the template adds after
            last = len(ids) - ids[::-1].index(eos)
            segments.extend([(ids[:last], True), (ids[last:], False)])
        else:
            segments.append((ids, target))
        done = text

    for i, turn in enumerate(turns):
        if turn.role == "assistant":
            take(_apply(tokenizer, msgs[:i], True, template), False)
            take(_apply(tokenizer, msgs[: i + 1], False, template), i in targets)
    take(_apply(tokenizer, msgs, False, template), False)
    return segments


def _apply(tokenizer: Any, msgs: list[dict[str, str]], generation_prompt: bool, template: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)
    except Exception as e:  # jinja2's TemplateError, raise_exception() in a template, a missing variable
        raise _template_failed(e) from None


def _template_failed(e: Exception) -> BadRow:
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    return BadRow(f"the chat template fails to render it: {reason}")


def _plain(turns: list[Turn], targets: set[int], tokenizer: Any) -> list[Segment]:
    """A tokenizer without a chat template: each non-assistant turn's text and a newline, each assistant turn's
    text and eos (the first piece with the tokenizer's special tokens, as plain text gets them)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    segments: list[Segment] = []
    for i, turn in enumerate(turns):
        first = not segments
        if turn.role == "assistant":
            segments.append((tokenizer(turn.content, add_special_tokens=first)["input_ids"] + eos, i in targets))
        else:
            segments.append((tokenizer(turn.content + "\n", add_special_tokens=first)["input_ids"], i in targets))
    return segments


def truncate(ids: list[int], labels: list[int], max_length: int, how: str,
             conversation: bool) -> tuple[list[int], list[int], bool]:
    """(ids, labels, whether cut) within `max_length` tokens.

    prompt_left (conversations): drop the oldest tokens first, up to where the last target begins; if the target
    alone is longer, keep its beginning. right, and plain text: keep the first `max_length` tokens.
    """
    excess = len(ids) - max_length
    if excess <= 0:
        return ids, labels, False
    if how == "prompt_left" and conversation:
        start, _ = last_target(labels)
        left = min(excess, start)
        ids, labels = ids[left:], labels[left:]
    return ids[:max_length], labels[:max_length], True


def last_target(labels: list[int]) -> tuple[int, int]:
    """[start, end) of the last run of loss-carrying tokens ((0, 0) when there is none)."""
    end = max((n for n, lab in enumerate(labels, 1) if lab != IGNORE), default=0)
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return start, end
