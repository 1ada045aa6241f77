"""builtin:python_stdlib: this interpreter's standard library as code samples, cut at line boundaries."""

import platform

from splitft.config import DataConfig
from splitft.data.datasets import load_examples, parse_rows
from splitft.data.stdlib import CHUNK_CHARS, _chunks, stdlib_rows
from splitft.model.synthetic import byte_tokenizer


def test_chunks_cut_at_line_boundaries_and_lose_nothing():
    text = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(400)) + "y" * 2000 + "\nlast\n"
    pieces = _chunks(text)
    assert "".join(pieces) == text and all(p.endswith("\n") for p in pieces)
    assert all(len(p) <= CHUNK_CHARS for p in pieces if p.count("\n") > 1), "only a lone long line is longer"


def test_the_library_is_read_in_a_fixed_order_with_its_module_and_identity():
    rows, source = stdlib_rows()
    assert source["python"] == platform.python_version() and len(source["sha256"]) == 64 and source["files"] > 100
    assert {"json", "asyncio", "email"} <= {r["module"] for r in rows}
    assert not any(r["module"] in ("test", "site-packages") for r in rows)
    parsed = parse_rows(DataConfig(path="builtin:python_stdlib", category_column="module"))
    assert parsed.format == "text" and parsed.n == len(rows) and parsed.source == source
    examples, stats = load_examples(DataConfig(path="builtin:python_stdlib", category_column="module",
                                               max_samples=50, max_length=64), byte_tokenizer(), seed=0)
    assert len(examples) == 50 and all(e.labels == e.input_ids and e.category for e in examples)
    assert stats.record()["source"] == source
