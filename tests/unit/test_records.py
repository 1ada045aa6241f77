"""The run records' schema (`records.py`): a record out of it is refused as it is written, a file out of it is a
clear error as it is read (a field it does not know excepted: another version wrote it), and the schema holds every
field the writers write (the runs in the other tests go through the same check)."""

import json

import pytest

from splitft.errors import UserError
from splitft.metrics import MetricsLogger, NullLogger
from splitft.records import SCHEMA, check, read_records

STEP = {"round": 0, "step": 1, "client_id": 2, "cut": 3, "loss": 2.5, "n_tokens": 40, "batch": [4, 16],
        "bytes_up": 100, "bytes_down": 90}


def test_a_record_is_written_only_as_its_schema_has_it(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl")
    rec = log.log("step", **STEP, lr=1e-3)
    assert rec["kind"] == "step" and isinstance(rec["wall_time"], float)
    with pytest.raises(ValueError, match="'step' record has no field 'lossy'"):
        log.log("step", **STEP, lossy=1.0)
    with pytest.raises(ValueError, match="'step' record lacks 'bytes_down'"):
        log.log("step", **{k: v for k, v in STEP.items() if k != "bytes_down"})
    with pytest.raises(ValueError, match="'round' record: round='0' is not int"):
        NullLogger().log("round", round="0")
    with pytest.raises(ValueError, match="unknown kind 'rounds'"):
        log.log("rounds", round=0)
    log.close()
    assert read_records(tmp_path / "m.jsonl") == [rec], "nothing out of the schema reached the file"


def test_types_are_json_types_one_level_deep():
    base = {"kind": "round", "round": 0, "wall_time": 1}
    assert check({**base, "train_loss": None, "eval_ppl": float("inf"), "clients": [0, 1]}) == []
    assert check({**base, "round": True}) == ["'round' record: round=True is not int"]
    assert check({**base, "clients": {"0": 1}}) == ["'round' record: clients={'0': 1} is not list[int]"]
    assert check({**base, "eval_ppl": "7"}) == ["'round' record: eval_ppl='7' is not float"]
    assert check({"kind": "server", "wall_time": 0.5}) == ["'server' record lacks 'message'"]


def test_reading_a_damaged_or_foreign_file_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = json.dumps({"kind": "server", "message": "hi", "wall_time": 0.1})
    path.write_text(good + "\n\n" + json.dumps({"kind": "server", "message": 3, "wall_time": 1}) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:3: 'server' record: message=3 is not str"):
        read_records(path)
    path.write_text(good + "\n" + json.dumps({"kind": "step", "round": 0, "wall_time": 1}) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: 'step' record lacks 'batch'"):
        read_records(path)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2 is not a JSON record"):
        read_records(path)
    path.write_text(good + "\n[1, 2]\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON object"):
        read_records(path)
    path.write_text(good + "\n" + json.dumps({"kind": "run", "run_id": "a", "runtime": "simulate", "wall_time": 0})
                    + "\n")
    assert [r["kind"] for r in read_records(path)] == ["server", "run"]
    assert read_records(path, "run")[0]["run_id"] == "a" and read_records(path, "step") == []
    other = {"kind": "server", "message": "x", "wall_time": 1, "added_later": 2}  # another version's field: kept
    path.write_text(json.dumps(other) + "\n")
    assert read_records(path) == [other]


def test_every_kind_has_a_schema_with_typed_fields():
    assert set(SCHEMA) == {"run", "setup", "cut_decision", "codec_costs", "step", "round", "eval", "server"}
    for kind, schema in SCHEMA.items():
        assert schema.__annotations__, kind
        assert "kind" not in schema.__annotations__ and "wall_time" not in schema.__annotations__, kind
