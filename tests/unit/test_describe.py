"""`splitft partition`'s table: buckets as columns, or a summary per client when there are too many."""

from splitft.data.describe import WIDE, format_table


def test_many_categories_print_as_a_summary_per_client():
    names = [f"mod{i}" for i in range(WIDE + 8)]
    hist = [[5 if i % 2 == c else 0 for i in range(len(names))] for c in range(2)]
    hist[0][0] = 50
    info = {"partitioner": "natural", "alpha": 0.5, "buckets": names, "sizes": [sum(h) for h in hist],
            "histogram": hist, "mean_js_distance": 1.0}
    lines = format_table(info).splitlines()
    assert "largest three (samples)" in lines[0] and len(lines) == 4
    assert lines[1].split()[2] == str(len(names) // 2) and "mod0 (50)" in lines[1]
    assert "summarised" in lines[-1]
    few = {**info, "buckets": names[:3], "histogram": [h[:3] for h in hist]}
    assert format_table(few).splitlines()[0].split()[2:] == names[:3]
