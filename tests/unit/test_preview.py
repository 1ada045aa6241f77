"""`splitft preview`: samples as training renders them, loss tokens marked, and the counts; no weights."""

import json

from splitft.config import load_config
from splitft.data.preview import CLOSE, OPEN, format_preview, preview
from tests.conftest import write_jsonl
from tests.unit.test_formats import CHAT


def test_preview_marks_exactly_the_loss_tokens_and_counts_every_row(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": CHAT[:2]}, {"messages": CHAT}] * 4)
    cfg = load_config(None, ["model.source=tiny:llama", f"data.path={path}", "data.max_length=30"])
    info = preview(cfg, 2)
    first = info["samples"][0]
    assert first["row"] == "chat.jsonl row 1" and first["truncated"] and first["tokens"] == 30
    assert [t for t, loss in first["pieces"] if loss] == ["Aye<|im_end|>"]  # prompt_left kept the last answer
    assert sum(lab != -100 for lab in first["labels"]) == first["loss_tokens"] == len("Aye") + 1
    assert info["samples"][1]["row"] == "chat.jsonl row 3", "the bad row 2 (no assistant turn) is not a sample"
    c = info["counts"]
    assert (c["rows"], c["dropped"]["bad_row"], c["train_samples"] + c["eval_samples"]) == (12, 4, 8)
    text = format_preview(info, color=False)
    assert f"{OPEN}Aye<|im_end|>{CLOSE}" in text and "12 rows -> " in text and "dropped: 4 bad_row" in text
    json.dumps(info)  # --json prints it as it is
