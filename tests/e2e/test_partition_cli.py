"""`splitft partition` on the builtin data with the tiny tokenizer: table, JSON, heat map, bad input."""

import json

import pytest

from tests.e2e.test_cli import splitft

BASE = ["model.source=tiny:llama", "data.max_samples=300", "federation.n_clients=4"]


def test_length_dirichlet_table_json_and_png(tmp_path):
    png = tmp_path / "p.png"
    res = splitft("partition", *BASE, "data.partitioner=length_dirichlet", "data.alpha=0.1", "--png", str(png))
    assert res.returncode == 0, res.stderr
    assert "mean Jensen-Shannon distance" in res.stdout and png.stat().st_size > 1000
    res = splitft("partition", *BASE, "data.partitioner=dirichlet", "data.category_column=play", "--json")
    info = json.loads(res.stdout)
    assert sum(info["sizes"]) == sum(map(sum, info["histogram"])) and "Hamlet" in info["buckets"]


@pytest.mark.parametrize("args, message", [
    (["data.partitioner=length_dirichlet", "data.alpha=0"], "data.alpha: must be > 0"),
    (["federation.n_clients=500", "data.max_samples=100"], "exceeds the"),
    (["data.partitioner=length_dirichlet", "data.n_buckets=400"], "distinct sample lengths"),
    (["data.partitioner=dirichlet", "data.category_column=author"], "'author' is not a column"),
    (["data.partitioner=dirichlet"], "data.category_column: required"),
])
def test_bad_input_exit_2_and_no_png(tmp_path, args, message):
    png = tmp_path / "p.png"
    res = splitft("partition", *BASE, *args, "--png", str(png))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not png.exists()
