"""Run directories: a folder that cannot hold a run, or holds something the run would overwrite, is refused
before anything is written; JSON results are replaced atomically."""

import json

import pytest

from splitft.config import Config
from splitft.errors import UserError
from splitft.rundir import RunLock, open_records, prepare_run_dir, refuse_existing_run, write_json


def _cfg(out):
    cfg = Config()
    cfg.metrics.out_dir = str(out)
    return cfg


def test_an_out_dir_that_is_a_file_or_below_one_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        refuse_existing_run(_cfg(f))
    with pytest.raises(UserError, match="lies below the file"):
        refuse_existing_run(_cfg(f / "sub" / "run"))
    assert f.read_text() == "mine"


def test_an_out_dir_holding_the_users_config_yaml_is_refused_and_the_file_kept(tmp_path):
    (tmp_path / "config.yaml").write_text("# my precious config\n")
    with pytest.raises(UserError, match="holds a config.yaml"):
        prepare_run_dir(_cfg(tmp_path))
    assert (tmp_path / "config.yaml").read_text() == "# my precious config\n"


def test_write_json_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"v": 1})

    def crash(*args):
        raise KeyboardInterrupt  # e.g. killed between writing and renaming

    monkeypatch.setattr("splitft.rundir.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}


@pytest.mark.parametrize("runtime", ["simulate", "server"])
def test_an_out_dir_holding_a_run_names_the_way_on_for_that_run(tmp_path, runtime):
    cfg = _cfg(tmp_path / "run")
    prepare_run_dir(cfg)
    logger, _ = open_records(cfg, runtime)
    logger.close()
    with pytest.raises(UserError, match="stopped before its first checkpoint, so it cannot be resumed") as e:
        refuse_existing_run(cfg)  # killed before its first checkpoint: resuming is no way on
    assert f"delete '{tmp_path / 'run'}'" in str(e.value)
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest").write_text("round_0\n")
    with pytest.raises(UserError, match=f"`splitft {runtime} --resume {tmp_path / 'run'}`"):
        refuse_existing_run(cfg)  # the command that began it, which resumes it
    write_json(tmp_path / "run" / "summary.json", {})
    with pytest.raises(UserError, match="that run finished"):
        refuse_existing_run(cfg)


def test_a_run_that_stopped_before_its_first_checkpoint_says_how_to_start_again(tmp_path):
    from splitft import checkpoint

    with pytest.raises(UserError, match="nothing to resume; start the run again with a new metrics.out_dir"):
        checkpoint.load(tmp_path)


def test_a_run_directory_is_held_by_one_process_at_a_time_and_let_go_when_it_ends(tmp_path):
    import subprocess
    import sys

    take = ("import sys; from pathlib import Path; from splitft.rundir import RunLock; "
            "RunLock(Path(sys.argv[1])).take()")
    with RunLock(tmp_path) as lock:
        lock.take()
        other = subprocess.run([sys.executable, "-c", take, str(tmp_path)], capture_output=True, text=True, check=False)
        assert other.returncode != 0 and "another process is running this run" in other.stderr
    assert subprocess.run([sys.executable, "-c", take, str(tmp_path)], check=False).returncode == 0, "let go at the end"
    assert list(tmp_path.iterdir()) == [], "holding a run writes nothing"
