"""Report figures that read true: equal cuts look equal, a run without a split or without traffic says so,
and traffic panels share one scale."""

import pytest

from splitft.report import Run, _band_plot, _bytes_plot, _cuts_plot, _ppl_plot, cut_grid

KINDS = ("activations_up", "labels_up", "grad_activations_down", "lora_up", "lora_down")


def _run(name, method, cuts, mb):
    rounds = [{"round": -1}] + [{"round": r, "cuts": cuts, "bytes": {k: int(mb * 1e6 * (r + 1)) for k in KINDS}}
                                for r in range(3)]
    return Run(name, rounds, {"method": method})


@pytest.fixture
def runs():
    return [_run("fixed", "split", {"0": 2, "1": 2, "2": 2}, 1.0), _run("small", "split", {"0": 1, "1": 3}, 0.1),
            _run("central", "centralized", {"0": 4}, 0.0)]


def test_equal_cuts_read_as_equal_and_a_run_without_a_split_says_so(runs, tmp_path):
    assert cut_grid(runs[0]) == (["0", "1", "2"], [0, 1, 2], [[2, 2, 2]] * 3)
    assert cut_grid(runs[2]) is None, "a no-split run has no cut (it is not 'cut 4')"
    fig = _cuts_plot(runs, tmp_path / "cuts.png")
    fixed, _, central = fig.axes
    assert sorted({t.get_text() for t in fixed.texts}) == ["2"], "one shared cut is printed as that cut"
    assert any("no split" in t.get_text() for t in central.texts)
    assert (tmp_path / "cuts.png").stat().st_size > 10_000


def test_traffic_panels_share_one_scale_and_an_empty_one_says_no_traffic(runs, tmp_path):
    fig = _bytes_plot(runs, tmp_path / "bytes.png")
    fixed, small, central = fig.axes
    assert fixed.get_ylim() == small.get_ylim() == central.get_ylim() and fixed.get_ylim()[1] >= 5.0
    assert any("no traffic" in t.get_text() for t in central.texts) and not central.containers


def _saved_whole(fig, path) -> bool:
    """The PNG holds everything the figure draws: legends, labels and titles (none cut off at an edge)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    width, height = Image.open(path).size
    box = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer())  # inches, every artist drawn
    return width >= box.width * 120 - 2 and height >= box.height * 120 - 2


@pytest.mark.parametrize("n", [1, 3])
def test_every_figure_holds_its_whole_legend_and_labels(runs, tmp_path, n):
    for r in runs:
        r.rounds = [{**x, "eval_ppl": 60.0 + x["round"], "virtual_time": x["round"] + 1.0} for x in r.rounds]
        r.summary["virtual_time_s"] = 3.0
    figures = {"bytes.png": _bytes_plot(runs[:n], tmp_path / "bytes.png"),
               "cuts.png": _cuts_plot(runs[:n], tmp_path / "cuts.png"),
               "ppl.png": _ppl_plot(runs[:n], "virtual_time", "virtual time", "ppl", tmp_path / "ppl.png"),
               "band.png": _band_plot({"a": runs[:n], "b": runs[:1]}, tmp_path / "band.png")}
    for name, fig in figures.items():
        assert _saved_whole(fig, tmp_path / name), name
