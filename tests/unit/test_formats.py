"""Formats (messages, ShareGPT, Alpaca, prompt/response, text) render to the expected tokens and loss mask on a
byte tokenizer with a known ChatML template; truncation keeps the target; bad rows are named and counted."""

import json

import pytest

from splitft.config import DataConfig
from splitft.data.datasets import load_examples, parse_rows
from splitft.data.formats import BadRow, Turn, parse
from splitft.data.render import render, truncate
from splitft.errors import UserError
from splitft.loss import IGNORE
from splitft.model.synthetic import byte_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Aye"}]


def spans(ids: list[int], labels: list[int], tok) -> list[str]:
    """The decoded runs of loss-carrying tokens."""
    out, run = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            run.append(i)
        elif run:
            out, run = out + [tok.decode(run)], []
    return out + ([tok.decode(run)] if run else [])


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multi_turn_messages_train_on_every_assistant_turn_and_its_end_of_turn_only():
    tok = byte_tokenizer()
    ids, labels = render(parse({"messages": CHAT}, "messages", DataConfig()), tok, "assistant", None)
    assert tok.decode(ids) + "\n" == tok.apply_chat_template(CHAT, tokenize=False)  # the template, exactly
    assert spans(ids, labels, tok) == ["Yo<|im_end|>", "Aye<|im_end|>"]
    assert labels[ids.index(tok.eos_token_id)] == IGNORE  # the system turn's end carries none


def test_train_on_last_assistant_and_all():
    tok = byte_tokenizer()
    turns = parse({"messages": CHAT}, "messages", DataConfig())
    ids, labels = render(turns, tok, "last_assistant", None)
    assert spans(ids, labels, tok) == ["Aye<|im_end|>"]
    ids, labels = render(turns, tok, "all", None)
    assert labels == ids and tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False)


def test_the_end_of_turn_trained_is_what_generation_stops_at():
    """What an assistant turn adds after the generation prompt is its content and the eos the model must emit."""
    tok = byte_tokenizer()
    ids, labels = render([Turn("user", "Hi"), Turn("assistant", "Yo")], tok, "assistant", None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if not isinstance(prompt, list) else prompt)
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert ids[len(prompt):] == tok("Yo", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_sharegpt_and_alpaca_render_as_the_same_conversation():
    tok, d = byte_tokenizer(), DataConfig()
    sharegpt = parse({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                        {"from": "gpt", "value": "Yo"}, {"from": "human", "value": "Again?"},
                                        {"from": "gpt", "value": "Aye"}]}, "sharegpt", d)
    assert sharegpt == parse({"messages": CHAT}, "messages", d)
    alpaca = parse({"instruction": "Translate.", "input": "hola", "output": "hello"}, "alpaca", d)
    assert alpaca == [Turn("user", "Translate.\n\nhola"), Turn("assistant", "hello")]
    assert parse({"instruction": "Greet.", "input": "", "output": "hi"}, "alpaca", d)[0] == Turn("user", "Greet.")
    ids, labels = render(alpaca, tok, "assistant", None)
    assert spans(ids, labels, tok) == ["hello<|im_end|>"]


def test_a_tokenizer_without_a_template_joins_turns_with_eos_after_each_answer():
    tok = byte_tokenizer()
    tok.chat_template = None
    ids, labels = render([Turn("user", "Hi"), Turn("assistant", "Yo")], tok, "assistant", None)
    assert tok.decode(ids) == "Hi\nYo<|im_end|>" and spans(ids, labels, tok) == ["Yo<|im_end|>"]


def test_a_template_file_overrides_the_tokenizer_template(tmp_path):
    tok = byte_tokenizer()
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}" \
               "{% if add_generation_prompt %}[assistant] {% endif %}"
    ids, labels = render([Turn("user", "Hi"), Turn("assistant", "Yo")], tok, "assistant", template)
    assert tok.decode(ids) == "[user] Hi<|im_end|>[assistant] Yo<|im_end|>"
    assert spans(ids, labels, tok) == ["Yo<|im_end|>"]


def test_prompt_left_truncation_drops_old_context_and_keeps_the_target():
    tok = byte_tokenizer()
    ids, labels = render(parse({"messages": CHAT}, "messages", DataConfig()), tok, "assistant", None)
    short_ids, short_labels, cut = truncate(ids, labels, 20, "prompt_left", conversation=True)
    assert cut and len(short_ids) == 20 and short_ids == ids[-20:]
    assert spans(short_ids, short_labels, tok)[-1] == "Aye<|im_end|>"
    right_ids, right_labels, _ = truncate(ids, labels, 20, "right", conversation=True)
    assert right_ids == ids[:20] and all(lab == IGNORE for lab in right_labels)  # its target is gone
    tiny_ids, _, _ = truncate(ids, labels, 3, "prompt_left", conversation=True)
    assert tok.decode(tiny_ids) == "Aye"  # a target longer than max_length keeps its beginning


def test_prompt_left_keeps_samples_that_right_truncation_drops(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a long question " * 8},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(6)]
    path = write(tmp_path / "chat.jsonl", rows)
    kept, stats = load_examples(DataConfig(path=str(path), max_length=40), byte_tokenizer(), 0)
    assert stats.samples == 6 and stats.truncated == 6 and stats.dropped == {"bad_row": 0, "no_target": 0, "empty": 0}
    assert all(len(e) == 40 and e.truncated for e in kept)
    with pytest.raises(UserError, match=r"only 0 usable samples.*6 lost their target beyond data.max_length=40"):
        load_examples(DataConfig(path=str(path), max_length=40, truncation="right"), byte_tokenizer(), 0)


def test_formats_are_detected_from_the_columns(tmp_path):
    cases = {"messages": {"messages": CHAT}, "sharegpt": {"conversations": [{"from": "human", "value": "a"},
                                                                              {"from": "gpt", "value": "b"}]},
             "alpaca": {"instruction": "a", "input": "", "output": "b"},
             "prompt_response": {"prompt": "a", "response": "b"}, "text": {"text": "ab"}}
    for fmt, row in cases.items():
        assert parse_rows(DataConfig(path=str(write(tmp_path / f"{fmt}.jsonl", [row] * 3)))).format == fmt
    with pytest.raises(UserError, match="data.format=messages: .* has no column"):
        parse_rows(DataConfig(path=str(tmp_path / "alpaca.jsonl"), format="messages"))


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages\\[0\\] has role 'robot'; use one of system"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages\\[0\\].content is list, not text"),
    ({"messages": []}, "empty conversation"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"messages": "hello"}, "must be a list of turns"),
])
def test_bad_message_rows_are_named(row, message):
    with pytest.raises(BadRow, match=message):
        parse(row, "messages", DataConfig())


def test_bad_sharegpt_role_is_named():
    with pytest.raises(BadRow, match="conversations\\[1\\] is from 'narrator'"):
        parse({"conversations": [{"from": "human", "value": "a"}, {"from": "narrator", "value": "b"}]}, "sharegpt",
              DataConfig())


def test_bad_rows_are_named_then_counted_and_an_all_bad_file_fails(tmp_path, capsys):
    good = {"messages": CHAT}
    bad = [{"messages": [{"role": "user", "content": "x"}]}] * 5
    path = write(tmp_path / "some.jsonl", [good, *bad, good, good])
    with open(path, "a") as f:
        f.write("{not json\n")
    examples, stats = load_examples(DataConfig(path=str(path)), byte_tokenizer(), 0)
    assert len(examples) == 3 and stats.rows == 9 and stats.dropped["bad_row"] == 6
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: data: some.jsonl row 2: the conversation has no assistant turn")
    assert "some.jsonl row 4" in err[2] and "... and 3 more bad rows (6 of 9 in all)" in err[3] and len(err) == 4
    allbad = write(tmp_path / "allbad.jsonl", bad)
    with pytest.raises(UserError, match="no row of .*allbad.jsonl' fits the messages format: allbad.jsonl row 1: "):
        parse_rows(DataConfig(path=str(allbad)))
    line = write(tmp_path / "line.jsonl", [good, good])
    line.write_text(line.read_text() + "[1, 2]\n")
    assert parse_rows(DataConfig(path=str(line))).bad[0][1] == "is a JSON list, not an object of columns"


def test_a_template_that_fails_to_render_names_the_row(tmp_path, capsys):
    path = write(tmp_path / "sys.jsonl", [{"messages": CHAT}, {"messages": CHAT[1:]}, {"messages": CHAT[1:]}])
    template = tmp_path / "nosys.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                        "{% endif %}{{ m['content'] }}<|im_end|>{% endfor %}")
    examples, stats = load_examples(DataConfig(path=str(path), chat_template=str(template)), byte_tokenizer(), 0)
    assert len(examples) == 2 and stats.dropped["bad_row"] == 1
    assert "sys.jsonl row 1: the chat template fails to render it: no system role" in capsys.readouterr().err
    with pytest.raises(UserError, match="data.chat_template: file .* not found"):
        load_examples(DataConfig(path=str(path), chat_template=str(tmp_path / "none.jinja")), byte_tokenizer(), 0)


def test_folders_of_shards_and_saved_datasets_load(tmp_path):
    import datasets

    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(8)]
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards / "a.jsonl", rows[:4])
    write(shards / "b.jsonl", rows[4:])
    from_shards, _ = load_examples(DataConfig(path=str(shards)), byte_tokenizer(), 0)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    from_saved, stats = load_examples(DataConfig(path=str(tmp_path / "saved")), byte_tokenizer(), 0)
    assert stats.format == "alpaca" and [e.input_ids for e in from_saved] == [e.input_ids for e in from_shards]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no readable shard"):
        parse_rows(DataConfig(path=str(tmp_path / "empty")))
    write(shards / "c.csv", [])
    with pytest.raises(UserError, match="mixes file types"):
        parse_rows(DataConfig(path=str(shards)))


MARKED = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
          "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_marked_template_uses_transformers_assistant_masks_which_agree_with_prefix_differences():
    from splitft.data import render as render_module

    tok = byte_tokenizer()
    turns = parse({"messages": CHAT}, "messages", DataConfig())
    ids, labels = render(turns, tok, "assistant", MARKED)  # through apply_chat_template's assistant masks
    segments = render_module._templated(turns, {2, 4}, tok, MARKED)  # through rendered prefixes
    flat = [i for seg, _ in segments for i in seg]
    flat_labels = [i if t else IGNORE for seg, t in segments for i in seg]
    end = max(n for n, lab in enumerate(flat_labels, 1) if lab != IGNORE)
    assert (ids, labels) == (flat[:end], flat_labels[:end])
    assert spans(ids, labels, tok) == ["Yo<|im_end|>", "Aye<|im_end|>"]


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\n{"text": "second"}\n')
    rows = parse_rows(DataConfig(path=str(path)))
    assert not rows.bad and rows.format == "text"


def test_an_answer_with_nothing_to_learn_is_empty_not_a_crash():
    tok = byte_tokenizer()
    tok.chat_template, tok.eos_token = None, None  # no template, no eos: an empty answer renders to nothing
    ids, labels = render([Turn("user", "Hi"), Turn("assistant", "")], tok, "assistant", None)
    assert ids == labels == []
