"""`splitft experiment` through the real CLI on a tiny model: four methods, one table, reuse, bad input."""

import json

from tests.e2e.test_cli import TINY, splitft

ADAPTIVE = ["heterogeneity.profile=list", "heterogeneity.devices=[phone,laptop,workstation]", "split.period=1",
            "federation.rounds=3"]


def test_experiment_runs_every_method_and_prints_one_table(tmp_path):
    out = tmp_path / "exp"
    res = splitft("experiment", *TINY, *ADAPTIVE, f"metrics.out_dir={out}")
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["splitft", "makespan", "sfl-fixed", "fedlora", "centralized"]
    result = json.loads((out / "experiment.json").read_text())
    m = result["methods"]
    assert m["sfl-fixed"]["cuts"] == "r0 2,2,2" and m["fedlora"]["cuts"] == "no split"
    assert m["splitft"]["cuts"].startswith("r0 1,1,3")  # resource start: 2 * (0.5, 2, 20) / 7.5, clipped
    assert m["fedlora"]["bytes_up"] < m["sfl-fixed"]["bytes_up"]  # adapters only vs activations every step
    assert all(r["virtual_time_s"] > 0 and r["final_eval_ppl"] > 0 for r in m.values())
    assert len((out / "experiment.md").read_text().splitlines()) == 2 + 5  # header, rule, one row per method
    for name in m:
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["method"] == {"splitft": "split", "makespan": "split", "sfl-fixed": "split"}.get(name, name)

    again = splitft("experiment", *TINY, *ADAPTIVE, f"metrics.out_dir={out}", "--methods", "fedlora")
    assert again.returncode == 0 and "reusing" in again.stderr

    # Each exported adapter, loaded with PEFT on the base model, is the model whose perplexity the run reports:
    # fixed cut, adaptive cuts with r_cut < r (blocks trained beyond r_cut by clients of other cuts), no split.
    for name in m:
        res = splitft("evaluate", str(out / name), "--json")
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)["eval_ppl"]
        want = json.loads((out / name / "summary.json").read_text())["final_eval_ppl"]
        assert abs(got - want) <= 1e-4 * want, (name, got, want)


def test_evaluate_refuses_what_is_not_a_finished_run(tmp_path):
    res = splitft("evaluate", str(tmp_path))
    assert res.returncode == 2 and "not a run directory" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "config.yaml").write_text("")
    res = splitft("evaluate", str(tmp_path))
    assert res.returncode == 2 and "no PEFT adapter" in res.stderr


def test_unknown_method_is_a_clear_error(tmp_path):
    res = splitft("experiment", *TINY, f"metrics.out_dir={tmp_path / 'x'}", "--methods", "splitft,magic")
    assert res.returncode == 2 and "unknown ['magic']" in res.stderr


def test_experiment_over_seeds_reports_means_intervals_and_paired_differences(tmp_path):
    out = tmp_path / "seeds"
    args = ("experiment", *TINY, "federation.rounds=1", f"metrics.out_dir={out}", "--methods", "splitft,sfl-fixed",
            "--seeds", "0,1", "--generate", "2")
    res = splitft(*args)
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "experiment.json").read_text())
    assert result["seeds"] == [0, 1] and set(result["runs"]) == {"0", "1"}
    for seed in (0, 1):
        for name in ("splitft", "sfl-fixed"):
            summary = json.loads((out / f"seed_{seed}" / name / "summary.json").read_text())
            assert summary["final_eval_ppl"] == result["runs"][str(seed)][name]["final_eval_ppl"]
    finals = [result["runs"][s]["splitft"]["final_eval_ppl"] for s in ("0", "1")]
    assert result["methods"]["splitft"]["final_eval_ppl"]["mean"] == sum(finals) / 2
    assert finals[0] != finals[1], "another seed is another run"
    assert "± " in res.stdout and "paired by seed" in res.stdout and "ROUGE-L" in res.stdout
    answers = json.loads((out / "seed_1" / "splitft" / "answers_2.json").read_text())
    assert answers["generated"] == 2 and result["runs"]["1"]["splitft"]["rouge_l"] == answers["rouge_l"]
    assert result["methods"]["splitft"]["rouge_l"]["n"] == 2
    again = splitft(*args)
    assert again.returncode == 0 and again.stderr.count("reusing") == 4 and "answering" not in again.stderr
    rep = splitft("report", str(out), "--out", str(tmp_path / "rep"))  # the experiment's folder: its seeds' runs
    assert rep.returncode == 0, rep.stderr
    assert "| splitft seed_0 |" in rep.stdout and "| sfl-fixed seed_1 |" in rep.stdout
    assert (tmp_path / "rep" / "ppl_mean_by_round.png").stat().st_size > 10_000
