"""`splitft generate RUN_DIR`: ask the fine-tuned model something. The run's base model with its exported adapter
(loaded with PEFT, as `splitft evaluate` loads it), the prompt rendered with the chat template training used
(data.chat_template or the tokenizer's), greedy by default, streamed to stdout.

    splitft generate out/default --prompt "Speak, what news?"          one answer, streamed
    splitft generate out/default --file prompts.jsonl --json            one JSON object per prompt
    splitft generate out/default --chat                                 a conversation (/reset, /exit)
A prompts file holds one prompt per line: {"prompt": ...}, {"messages": [...]} (answered after its last turn), or
a JSON string. Works for a deployed run's directory too (its server writes config.yaml and adapter/).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import TextStreamer

from .config import DataConfig
from .data.datasets import chat_template_of
from .data.formats import BadRow, Turn, parse
from .errors import UserError
from .evaluate import load_run_model


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy (deterministic); > 0 samples with this temperature."""
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature < float("inf"):
            raise UserError(f"--temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p: must be in (0, 1], got {self.top_p}")


class Generator:
    """A run's model with its adapter, and the way its prompts are rendered."""

    def __init__(self, run_dir: str | Path, adapter: str | Path | None = None):
        self.run = load_run_model(run_dir, adapter, "generate")
        self.cfg, self.tokenizer, self.model = self.run.cfg, self.run.tokenizer, self.run.model
        self.template = chat_template_of(self.cfg.data)
        self.adapter = str(self.run.adapter)

    def prompt_ids(self, turns: list[Turn]) -> list[int]:
        """The conversation so far with the generation prompt, as training rendered its prefixes."""
        tok = self.tokenizer
        if self.template is not None or getattr(tok, "chat_template", None):
            msgs = [{"role": t.role, "content": t.content} for t in turns]
            try:
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                               chat_template=self.template)
            except Exception as e:  # the template refuses the conversation (e.g. no system role)
                raise UserError(f"generate: the chat template cannot render this prompt: {e}") from None
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "".join(t.content + "\n" for t in turns)  # no template: as render.py's plain turns
        return tok(text, add_special_tokens=True)["input_ids"]

    def generate(self, turns: list[Turn], sampling: Sampling, stream: TextIO | None = None) -> dict[str, Any]:
        """The answer to `turns` (streamed to `stream` as it is decoded, when given)."""
        ids = self.prompt_ids(turns)
        eos = self.tokenizer.eos_token_id
        torch.manual_seed(sampling.seed)
        sample = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p} \
            if sampling.temperature > 0 else None
        new = self.run.continue_ids(ids, sampling.max_new_tokens, sample,
                                    _Streamer(self.tokenizer, stream) if stream is not None else None)
        finished = bool(new) and new[-1] == eos
        text = self.tokenizer.decode(new[:-1] if finished else new, skip_special_tokens=True)
        return {"completion": text, "prompt_tokens": len(ids), "new_tokens": len(new),
                "finish": "eos" if finished else "length"}


class _Streamer(TextStreamer):
    """transformers' TextStreamer onto any text stream, without the prompt, special tokens skipped."""

    def __init__(self, tokenizer: Any, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


def read_prompts(path: str | Path) -> Iterator[tuple[int, list[Turn]]]:
    """(line number, conversation to answer) per line of a prompts file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--file: '{path}' not found")
    for n, line in enumerate(p.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--file: {p.name} line {n} is not JSON ({e.msg}); write one prompt per line: "
                            f'{{"prompt": "..."}}, {{"messages": [...]}} or a JSON string') from None
        yield n, _turns(value, f"{p.name} line {n}")


def _turns(value: Any, where: str) -> list[Turn]:
    if isinstance(value, str):
        return [Turn("user", value)]
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return [Turn("user", value["prompt"])]
    if isinstance(value, dict) and "messages" in value:
        kind = type(value["messages"]).__name__
        if kind != "list":
            raise UserError(f"--file: {where}: 'messages' must be a list of turns, got {kind}")
        try:
            parsed = parse({"messages": value["messages"] + [{"role": "assistant", "content": ""}]}, "messages",
                           DataConfig())
            assert not isinstance(parsed, str), "the messages format parses into turns"
            turns = parsed[:-1]  # a conversation to answer: its last turn need not be an answer
        except BadRow as e:
            raise UserError(f"--file: {where}: {e}") from None
        return turns
    raise UserError(f'--file: {where}: expected {{"prompt": "..."}}, {{"messages": [...]}} or a JSON string')


def chat(gen: Generator, sampling: Sampling, system: str | None, stdin: TextIO, stdout: TextIO,
         stderr: TextIO) -> None:
    """A conversation on the terminal: each line a user turn, the answer streamed; /reset, /exit (or EOF)."""
    history = [Turn("system", system)] if system else []
    print("chat with the fine-tuned model: a line per turn; /reset forgets, /exit (or Ctrl-D) ends", file=stderr)
    while True:
        print("> ", end="", file=stderr, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not line.strip():
            continue
        history.append(Turn("user", line.rstrip("\n")))
        answer = gen.generate(history, sampling, stream=stdout)
        history.append(Turn("assistant", answer["completion"]))
