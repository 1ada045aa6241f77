"""The real `splitft` CLI on a tiny model: run directory contents, PEFT reload, and bad input -> exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitft.config import load_config
from splitft.records import read_records

TINY = ["model.source=tiny:llama", "data.max_samples=120", "data.max_length=200", "federation.n_clients=3",
        "federation.rounds=2", "federation.local_steps=2", "train.batch_size=2", "data.max_eval_samples=8",
        "lora.r=4", "lora.r_cut=2", "lora.alpha=8", "train.lr=0.01", "metrics.progress=false"]


def splitft(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "splitft.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    res = splitft("simulate", *TINY, f"metrics.out_dir={out}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rounds"] == 2, "stdout holds the summary JSON alone (`| jq` works)"
    assert "round 1: train_loss=" in res.stderr, "round lines for people go to stderr"
    return out


def test_run_directory_has_config_metrics_summary_adapter(run_dir):
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"]:
        assert (run_dir / name).is_file(), name
    records = read_records(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    rounds = [r for r in records if r["kind"] == "round"]
    assert len(steps) == 2 * 2 * 3 and [r["round"] for r in rounds] == [-1, 0, 1]
    assert all(s["bytes_up"] > 0 and s["bytes_down"] > 0 and s["cut"] == 2 for s in steps)
    last = rounds[-1]
    assert last["bytes"]["lora_up"] > 0 and last["cuts"] == {"0": 2, "1": 2, "2": 2}
    assert last["eval_ppl"] < rounds[0]["eval_ppl"], "training should lower held-out perplexity"


def test_activation_bytes_match_the_tensor_shapes(run_dir):
    steps = read_records(run_dir / "metrics.jsonl", "step")
    for s in steps:  # up: B*T*H*4 (fp32 activations) + B*T (uint8 mask) + 4*B*T (int32 labels)
        bt = s["bytes_up"] // (32 * 4 + 1 + 4)
        assert s["bytes_up"] == bt * (32 * 4 + 5) and s["bytes_down"] == bt * 32 * 4 + 24


def test_saved_adapter_reloads_with_peft_and_reproduces_final_eval_loss(run_dir):
    from peft import PeftModel

    from splitft.build import build_setup
    from splitft.data.datasets import collate
    from splitft.loss import token_loss
    from splitft.model.loader import load

    cfg = load_config(run_dir / "config.yaml")
    setup = build_setup(cfg)  # same seed: same base weights and same held-out examples
    model = PeftModel.from_pretrained(load(cfg.model.source, seed=cfg.federation.seed).model,
                                      str(run_dir / "adapter"))
    model.eval()
    ranks = {m.r["default"] for _, m in model.named_modules() if hasattr(m, "r") and "default" in m.r}
    assert ranks == {4}, "adapters are stored at rank r; the cut layer's unused components add nothing"
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(setup.eval), cfg.train.batch_size):
            b = collate(setup.eval[i : i + cfg.train.batch_size], setup.pad_id)
            st = token_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
            loss_sum, n = loss_sum + st.loss_sum.item(), n + st.n_tokens
    final = read_records(run_dir / "metrics.jsonl", "round")[-1]
    assert abs(loss_sum / n - final["eval_loss"]) < 1e-4


def test_existing_run_is_never_overwritten(run_dir):
    before = (run_dir / "metrics.jsonl").read_bytes()
    res = splitft("simulate", *TINY, f"metrics.out_dir={run_dir}")
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def _unknown_family_folder(tmp_path: Path) -> str:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    return str(d)


BAD = {
    "unknown family": (lambda t: [f"model.source={_unknown_family_folder(t)}"], "family 'bert' is not supported"),
    "cut too large": (lambda t: ["split.cut=4"], "split.cut: must be in [1, 3]"),
    "cut too small": (lambda t: ["split.cut=0"], "split.cut: must be >= 1"),
    "missing data": (lambda t: [f"data.path={t / 'missing.jsonl'}"], "data.path: file"),
    "empty data": (lambda t: [f"data.path={(t / 'e.jsonl').write_text('') or t / 'e.jsonl'}"], "holds no samples"),
    "too long": (lambda t: ["data.max_length=4096"], "exceeds the model's context of 256"),
    "missing model": (lambda t: ["model.source=/nonexistent/model"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    make_args, message = BAD[case]
    out = tmp_path / "out"
    res = splitft("simulate", *TINY, *make_args(tmp_path), f"metrics.out_dir={out}")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("splitft: error:")
    assert not out.exists()


def test_report_renders_plots_and_a_table_from_run_directories(run_dir, tmp_path):
    res = splitft("report", str(run_dir), str(run_dir), "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    for name in ("ppl_vs_virtual_time", "ppl_vs_wall_time", "bytes_per_round", "cuts"):
        png = (tmp_path / "rep" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    final = json.loads((run_dir / "summary.json").read_text())["final_eval_ppl"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| {final:.2f} |" in md and "run (2)" in md, "both runs in the table, names made unique"
    bad = splitft("report", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


def test_plan_prints_every_policy_with_its_cuts_and_predicted_round(tmp_path):
    res = splitft("plan", *TINY, f"metrics.out_dir={tmp_path / 'p'}", "heterogeneity.profile=list",
                  "heterogeneity.devices=[phone,laptop,workstation]", "--json")
    assert res.returncode == 0, res.stderr
    policies = json.loads(res.stdout)["policies"]
    assert set(policies) == {"fixed-1", "fixed-2", "fixed-best", "resource", "splitft", "makespan", "oracle"}
    assert all(set(p["cuts"]) == {"0", "1", "2"} and p["round_s"] > 0 for p in policies.values())
    assert policies["makespan"]["round_s"] <= min(p["round_s"] for p in policies.values()) * 1.02
    assert policies["oracle"]["exact"] and not (tmp_path / "p").exists(), "plan trains nothing, writes nothing"
    table = splitft("plan", *TINY, f"metrics.out_dir={tmp_path / 'p'}")
    assert table.returncode == 0 and "| makespan |" in table.stdout and "| oracle (exact) |" in table.stdout


def test_plan_prices_joined_server_steps_in_time_and_server_memory(tmp_path):
    """With heterogeneity.server_step_s, joining 3 clients' turns pays it once per server step instead of 3 times
    (a shorter round), and the server's estimated memory grows with the clients' activations it keeps."""
    args = [*TINY, f"metrics.out_dir={tmp_path / 'p'}", "heterogeneity.server_step_s=0.5", "--json"]
    one = json.loads(splitft("plan", *args).stdout)
    joined = json.loads(splitft("plan", *args, "federation.server_batch=3").stdout)
    assert one["with_server_batch"]["server_batch"] == 3 and joined["with_server_batch"]["server_batch"] == 1
    for name, p in joined["policies"].items():
        assert p["round_s"] == pytest.approx(one["with_server_batch"]["round_s"][name])
        assert p["round_s"] < one["policies"][name]["round_s"], name
    memory = joined["server_memory_gb"]
    assert memory["server_batch=3"] > memory["server_batch=1"] == one["server_memory_gb"]["server_batch=1"] > 0


def test_generate_answers_a_prompts_file_as_json_lines_and_streams_one_prompt(run_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Speak."}\n{"messages": [{"role": "user", "content": "Hark?"}]}\n')
    res = splitft("generate", str(run_dir), "--file", str(prompts), "--json", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr
    answers = [json.loads(line) for line in res.stdout.splitlines()]
    assert [a["line"] for a in answers] == [1, 2] and all(a["new_tokens"] <= 4 for a in answers)
    streamed = splitft("generate", str(run_dir), "--prompt", "Speak.", "--max-new-tokens", "4")
    assert streamed.returncode == 0 and streamed.stdout == answers[0]["completion"] + "\n"
    bad = splitft("generate", str(run_dir), "--prompt", "x", "--temperature", "-1")
    assert bad.returncode == 2 and "--temperature: must be >= 0" in bad.stderr and "Traceback" not in bad.stderr
