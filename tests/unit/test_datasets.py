"""Tokenization (prompt masked), formats through `datasets`, truncation, batching, bad input."""

import json

import pytest
import torch

from splitft.config import DataConfig
from splitft.data.datasets import IGNORE, BatchStream, Example, collate, load_examples, split_eval
from splitft.data.formats import Turn
from splitft.data.render import render
from splitft.errors import UserError
from splitft.model.synthetic import byte_tokenizer


def tokenize_row(row: dict, columns: tuple[str, ...], tok) -> Example:
    parsed = str(row[columns[0]]) if len(columns) == 1 else [Turn("user", row[columns[0]]),
                                                             Turn("assistant", row[columns[1]])]
    return Example(*render(parsed, tok, "assistant", None))


def test_instruction_rows_mask_the_prompt_and_end_with_eos():
    tok = byte_tokenizer()
    ex = tokenize_row({"p": "Hi", "r": "Yo"}, ("p", "r"), tok)
    n_prompt = sum(lab == IGNORE for lab in ex.labels)
    assert tok.decode(ex.input_ids[:n_prompt]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:] and ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[n_prompt:-1]) == "Yo"


def test_plain_text_rows_train_on_every_token():
    ex = tokenize_row({"text": "abc"}, ("text",), byte_tokenizer())
    assert ex.labels == ex.input_ids


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".txt"])
def test_local_formats_load(tmp_path, suffix):
    rows = [{"text": f"line number {i}"} for i in range(10)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    else:
        import pandas as pd

        getattr(pd.DataFrame(rows), "to_csv" if suffix == ".csv" else "to_parquet")(path, index=False)
    examples, stats = load_examples(DataConfig(path=str(path)), byte_tokenizer(), seed=0)
    assert stats.samples == 10 and all(ex.labels == ex.input_ids for ex in examples)


def test_empty_lines_of_text_are_counted_as_empty_not_as_cut(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first paragraph\n\nsecond one\n\nthird\n")
    examples, stats = load_examples(DataConfig(path=str(path)), byte_tokenizer(), seed=0)
    assert stats.samples == 3 and stats.dropped["empty"] == stats.rows - 3 > 0 and stats.dropped["no_target"] == 0


def test_right_truncation_is_counted_and_prompt_only_samples_dropped(qa_file):
    cfg = DataConfig(path=str(qa_file), max_length=31, truncation="right")
    examples, stats = load_examples(cfg, byte_tokenizer(), seed=0)
    assert all(len(e) <= 31 for e in examples) and all(e.truncated for e in examples)
    assert stats.truncated == stats.samples > 0 and stats.dropped["no_target"] > 0  # truncated: of those kept
    assert stats.samples + stats.dropped["no_target"] == stats.rows == 30


def test_bad_data_errors(tmp_path):
    tok = byte_tokenizer()
    with pytest.raises(UserError, match="not found"):
        load_examples(DataConfig(path=str(tmp_path / "nope.jsonl")), tok, 0)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty.jsonl"):
        load_examples(DataConfig(path=str(tmp_path / "empty.jsonl")), tok, 0)
    (tmp_path / "cols.jsonl").write_text('{"question": "a", "answer": "b"}\n' * 3)
    with pytest.raises(UserError, match="fit no format.*prompt_column"):
        load_examples(DataConfig(path=str(tmp_path / "cols.jsonl")), tok, 0)


def test_collate_pads_right_and_ignores_padding():
    tok = byte_tokenizer()
    a, b = tokenize_row({"text": "abcd"}, ("text",), tok), tokenize_row({"text": "a"}, ("text",), tok)
    batch = collate([a, b], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(a))
    assert batch["attention_mask"][1].tolist() == [1] * len(b) + [0] * (len(a) - len(b))
    assert torch.all(batch["labels"][1, len(b):] == IGNORE)


def test_batch_stream_is_seeded_and_cycles():
    tok = byte_tokenizer()
    exs = [tokenize_row({"text": str(i)}, ("text",), tok) for i in range(5)]
    s1, s2 = BatchStream(exs, 2, 0, seed=3), BatchStream(exs, 2, 0, seed=3)
    for _ in range(6):  # more than one epoch
        assert torch.equal(s1.next()["input_ids"], s2.next()["input_ids"])


def test_split_eval_holds_out_at_least_one():
    train, held = split_eval(list(range(10)), 0.01, 64)  # type: ignore[arg-type]
    assert len(held) == 1 and len(train) == 9


def test_a_text_column_of_mixed_types_is_dropped_or_warned_never_stringified_in_silence(tmp_path, capsys):
    rows = [{"prompt": f"say {w}", "response": w} for w in ["hark", "anon", "fie", "ay"]]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"prompt": ["x", "y"], "response": "b"},
                                                          {"prompt": None, "response": "c"}]))
    examples, stats = load_examples(DataConfig(path=str(mixed)), byte_tokenizer(), 0)
    assert len(examples) == 4 and stats.dropped == {"bad_row": 2, "no_target": 0, "empty": 0} and stats.rows == 6
    err = capsys.readouterr().err
    assert "mixed.jsonl row 5: column 'prompt' holds list, not text" in err
    assert "mixed.jsonl row 6: column 'prompt' holds missing, not text" in err
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"prompt": "what is six times seven",
                                                                      "response": 42}]))
    examples, _ = load_examples(DataConfig(path=str(numbers)), byte_tokenizer(), 0)
    assert len(examples) == 5
    err = capsys.readouterr().err
    assert "column 'response'" in err and "1 number(s) among its 5 rows" in err and "trained as their text" in err


def test_a_simulated_run_reports_each_clients_samples_and_the_datas_counts(tmp_path):
    from splitft.records import read_records
    from splitft.sim.runner import run_simulation
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "llama", "federation.rounds=1", "federation.local_steps=1")
    summary = run_simulation(cfg)
    [setup] = read_records(tmp_path / "run" / "metrics.jsonl", "setup")
    data = setup["data"]
    none = {"bad_row": 0, "no_target": 0, "empty": 0}
    assert (data["format"], data["rows"], data["dropped"]) == ("prompt_response", 120, none)
    assert data["train_samples"] + data["eval_samples"] == data["samples"] == 120
    for c, share in data["clients"].items():
        assert {k: summary["clients"][c][k] for k in share} == share
    assert sum(s["train_samples"] for s in data["clients"].values()) == data["train_samples"]
    assert data["truncated"] >= sum(s["truncated"] for s in data["clients"].values()) > 0
