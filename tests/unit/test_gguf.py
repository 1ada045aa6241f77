"""The lean GGUF reader (`model/gguf.py`) reads what `gguf.GGUFReader` reads, skips metadata arrays without
materializing them, dequantizes straight to the storage dtype, and refuses a file cut short."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, dequantize
from gguf.quants import quantize

from splitft.model.gguf import ROWS, GGUFError, GGUFFile


@pytest.fixture
def gguf_path(tmp_path):
    """A small llama-like GGUF: scalar metadata, a string array (tokens) and a float array, and tensors in Q4_1,
    Q8_0, BF16, F16 and F32, one of them taller than a dequantization chunk."""
    path = tmp_path / "m.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(500)])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(500)])
    w.add_string("general.name", "tiny test")
    rng = np.random.default_rng(0)
    for name, qtype, shape in [("token_embd.weight", Q.Q4_1, (ROWS * 2 + 40, 64)), ("blk.0.attn_q.weight", Q.Q8_0,
                               (64, 64)), ("blk.0.ffn_up.weight", Q.BF16, (96, 64)),
                               ("blk.0.attn_norm.weight", Q.F32, (64,)), ("blk.1.ffn_down.weight", Q.F16, (64, 96))]:
        data = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_it_reads_the_scalars_and_skips_the_arrays(gguf_path):
    f = GGUFFile(gguf_path)
    assert f.arch == "llama" and f.meta["llama.block_count"] == 2 and f.meta["llama.context_length"] == 64
    assert f.meta["general.name"] == "tiny test"
    assert f.meta["tokenizer.ggml.tokens"] == ("array", 8, 500), "an array stands as its type and length only"
    assert f.meta["tokenizer.ggml.scores"][2] == 500


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_tensor_is_what_gguf_dequantizes_straight_at_the_storage_dtype(gguf_path, dtype):
    f = GGUFFile(gguf_path)
    reader = GGUFReader(str(gguf_path))
    assert set(f.tensors) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        want = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), np.float32)).to(dtype)
        got = f.tensor(t.name, dtype)
        assert got.dtype == dtype and got.shape == want.shape and torch.equal(got, want), t.name


def test_a_whole_tensor_processing_sees_it_whole(gguf_path):
    f = GGUFFile(gguf_path)
    flipped = f.tensor("blk.0.attn_q.weight", torch.float32, process=lambda w: w[::-1])
    assert torch.equal(flipped, f.tensor("blk.0.attn_q.weight", torch.float32).flip(0))


@pytest.mark.parametrize("keep", [0, 3, 20, -100])
def test_a_file_cut_short_or_foreign_is_refused(tmp_path, gguf_path, keep):
    data = gguf_path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(GGUFError):
        GGUFFile(bad)


def test_junk_is_refused(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(GGUFError, match="no GGUF magic"):
        GGUFFile(junk)


def test_an_unwritable_metadata_cache_is_one_line_naming_the_setting(tmp_path, gguf_path, monkeypatch):
    from splitft.model.loader import ModelSourceError, gguf_folder

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SPLITFT_CACHE_DIR", str(blocker))
    with pytest.raises(ModelSourceError, match=r"cannot write the config and tokenizer converted from 'm.gguf' .*"
                                               r"set SPLITFT_CACHE_DIR to a writable folder"):
        gguf_folder(gguf_path)
