"""`splitft generate`: greedy is deterministic and equals a plain transformers + PEFT generate of the adapter."""

import io
import json

import pytest
import torch

from splitft.build import load_base
from splitft.data.formats import Turn
from splitft.errors import UserError
from splitft.generate import Generator, Sampling, chat, read_prompts
from splitft.sim.runner import run_simulation
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    run_simulation(tiny_config(tmp, "llama", "federation.rounds=1", "train.lr=0.05"))
    return tmp / "run"


def test_greedy_is_deterministic_and_equals_plain_peft_generate(run):
    from peft import PeftModel

    gen = Generator(run)
    turns = [Turn("user", "Speak, what news?")]
    ours = gen.generate(turns, Sampling(max_new_tokens=12))
    assert gen.generate(turns, Sampling(max_new_tokens=12)) == ours
    base, tok, _ = load_base(gen.cfg)
    plain = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Speak, what news?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert ours["prompt_tokens"] == ids.shape[1] and ours["new_tokens"] == len(new)
    assert ours["completion"] == tok.decode(new, skip_special_tokens=True)


def test_streamed_text_is_the_completion_and_sampling_follows_its_seed(run):
    gen = Generator(run)
    out = io.StringIO()
    answer = gen.generate([Turn("user", "Hark")], Sampling(max_new_tokens=6), stream=out)
    assert out.getvalue() == answer["completion"] + "\n"
    hot = Sampling(max_new_tokens=6, temperature=1.5, seed=3)
    assert gen.generate([Turn("user", "Hark")], hot) == gen.generate([Turn("user", "Hark")], hot)


def test_chat_keeps_the_conversation_until_reset(run, monkeypatch):
    gen, seen = Generator(run), []
    monkeypatch.setattr(gen, "generate", lambda turns, s, stream=None: seen.append(list(turns)) or
                        {"completion": f"answer {len(seen)}"})
    chat(gen, Sampling(), "Be brief.", io.StringIO("one\ntwo\n/reset\nthree\n"), io.StringIO(), io.StringIO())
    assert [t.content for t in seen[1]] == ["Be brief.", "one", "answer 1", "two"]
    assert [t.content for t in seen[2]] == ["Be brief.", "three"]


def test_prompts_files_and_bad_input(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a"}\n"b"\n\n{"messages": [{"role": "user", "content": "c"}]}\n')
    assert [(n, [t.content for t in turns]) for n, turns in read_prompts(good)] == [(1, ["a"]), (2, ["b"]), (4, ["c"])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl line 1: messages\\[0\\] has role 'robot'"):
        list(read_prompts(bad))
    bad.write_text('{"messages": "hello"}\n')
    with pytest.raises(UserError, match="bad.jsonl line 1: 'messages' must be a list of turns, got str"):
        list(read_prompts(bad))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a"}\n')
    assert [t.content for _, turns in read_prompts(bom) for t in turns] == ["a"]
    with pytest.raises(UserError, match="not found"):
        list(read_prompts(tmp_path / "none.jsonl"))
    with pytest.raises(UserError, match="--top-p: must be in"):
        Sampling(top_p=0).check()
    with pytest.raises(UserError, match="not a run directory"):
        Generator(tmp_path)


def test_answer_scores_give_a_perfect_answer_one_and_refuse_plain_text(run, monkeypatch):
    from splitft.build import load_data
    from splitft.data.render import last_target
    from splitft.evaluate import answer_scores, evaluate_run, load_run_model

    rm = load_run_model(run, None, "evaluate")
    _, held, _ = load_data(rm.cfg, rm.tokenizer)
    targets = {tuple(ex.input_ids[:s]): ex.input_ids[s:e] for ex in held for s, e in [last_target(ex.labels)]}
    monkeypatch.setattr(rm, "continue_ids", lambda ids, n: targets[tuple(ids)])  # answers exactly the reference
    perfect = answer_scores(rm, held, 3, 8)
    assert (perfect["generated"], perfect["rouge_l"], perfect["exact_match"]) == (3, 1.0, 1.0)
    assert all(a["reference"] == a["answer"] != "" for a in perfect["answers"])
    monkeypatch.setattr(rm, "continue_ids", lambda ids, n: [])  # says nothing
    assert answer_scores(rm, held, 3, 8)["rouge_l"] == 0.0
    plain = [type(ex)(ex.input_ids, list(ex.input_ids)) for ex in held]  # every token a target: no prompt
    with pytest.raises(UserError, match="no held-out sample has a prompt"):
        answer_scores(rm, plain, 3, 8)
    result = evaluate_run(run, generate=2, max_new_tokens=4)  # the real model, end to end
    assert result["generated"] == 2 and 0.0 <= result["rouge_l"] <= 1.0 and len(result["answers"]) == 2
