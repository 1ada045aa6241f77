"""Only the weights a party runs: a model skeleton on the `meta` device, filled tensor by tensor from its file.

A deployed client at cut c holds the embeddings and blocks [0, c); the server holds blocks [first, L), the final
norm and the head (and the embedding matrix when the head is tied to it). Loading the whole file and dropping
the rest would make every process peak at the whole model (SmolLM2-135M: 1.17 GB RSS for a cut-1 client), so:

    model = skeleton(config, dtype)              # every parameter on `meta` (0 bytes); buffers real
    weights = WeightFile.open(folder)            # safetensors: lazy per-tensor reads (GGUF: open_gguf, mapped)
    materialize(model, weights, prefixes, device, dtype)   # read + dequantize only the tensors under `prefixes`,
                                                           # straight to `dtype` (float32 256 rows at a time)
    release(model, prefixes)                     # back to meta: a client whose cut shrank frees those blocks
Parameter names are the Hugging Face model's; in a PEFT-wrapped model the frozen base weights carry the
`base_model.model.` prefix and `.base_layer.`, which `hf_name` strips. Tied parameters (a head tied to the
embeddings) are one Parameter object in both places, as `from_pretrained` leaves them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, reason
from .families import config_of, hf_of


class WeightFileError(UserError):
    """A weight file that cannot give a tensor the model needs (message names the file and the tensor)."""


def hf_name(name: str) -> str:
    """The Hugging Face parameter name of a (possibly PEFT-wrapped) model's parameter name."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def skeleton(config: Any, dtype: torch.dtype) -> nn.Module:
    """The `*ForCausalLM` of `config` with every parameter on `meta` and real buffers (rotary frequencies)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


Read = Callable[[str, torch.dtype, torch.device], torch.Tensor]


class WeightFile:
    """Reads single tensors, by Hugging Face name, at a given dtype: from a safetensors folder, a GGUF file, memory
    (tiny:<family>) or a seeded generator (random:<shape>)."""

    def __init__(self, path: Path, read: Read, names: Iterable[str]):
        self.path, self._read, self.names = path, read, set(names)

    @classmethod
    def open(cls, folder: Path) -> WeightFile:
        """A folder with model.safetensors (or a sharded index)."""
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        try:
            if index.is_file():
                where = {n: folder / f for n, f in json.loads(index.read_text())["weight_map"].items()}
            else:
                with safe_open(str(folder / "model.safetensors"), "pt") as f:
                    where = {n: folder / "model.safetensors" for n in f.keys()}
        except Exception as e:  # OSError, SafetensorError (junk header), KeyError (a bad index)
            raise WeightFileError(f"model.source: cannot read the safetensors weights in '{folder}': "
                                  f"{reason(e)}") from None

        def read(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            with safe_open(str(where[name]), "pt") as f:  # memory-mapped: only this tensor's pages are read
                return f.get_tensor(name).to(device=device, dtype=dtype)

        return cls(folder, read, where)

    @classmethod
    def open_gguf(cls, f: Any, model: nn.Module) -> WeightFile:
        """`f`: the lean `gguf.GGUFFile`; `model`: its skeleton, which names the tensors (GGUF names map to it
        through transformers' own table, and transformers' per-architecture fix-ups apply)."""
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        processor = TENSOR_PROCESSORS.get(f.arch, TensorProcessor)(config=config_of(model).to_dict())
        with _one_name_table():
            to_hf = get_gguf_hf_weights_map(model, processor)
        gguf_names = {to_hf[n]: n for n in f.tensors if n in to_hf}

        def read(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            g = gguf_names[name]
            fix = None if _untouched(processor, g) else (
                lambda w: processor.process(weights=w, name=g, tensor_key_mapping=to_hf, parsed_parameters={}).weights)
            return f.tensor(g, dtype, fix).to(device)

        return cls(f.path, read, gguf_names)

    @classmethod
    def in_memory(cls, path: Path, state: dict[str, torch.Tensor]) -> WeightFile:
        return cls(path, lambda n, dtype, device: state[n].to(device=device, dtype=dtype), state)

    @classmethod
    def random(cls, path: Path, model: nn.Module, seed: int) -> WeightFile:
        """Each tensor drawn when it is read, on its device, from `seed` and its name alone (a party holding some
        blocks gets the numbers a whole load gets): N(0, 0.02) matrices, norm weights 1, biases 0."""
        shapes = {hf_name(n): p.shape for n, p in model.named_parameters(remove_duplicate=False)}

        def read(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            out = torch.empty(shapes[name], dtype=dtype, device=device)
            if out.dim() == 1:
                return out.fill_(0.0 if name.endswith(".bias") else 1.0)
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            return out.normal_(0.0, 0.02, generator=torch.Generator(device).manual_seed(int.from_bytes(digest[:8])))

        return cls(path, read, shapes)

    def read(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if name not in self.names:
            raise WeightFileError(f"model.source: '{self.path}' has no tensor '{name}'")
        try:
            return self._read(name, dtype, device)
        except Exception as e:  # a truncated or damaged file fails only when its bytes are read
            raise WeightFileError(f"model.source: tensor '{name}' of '{self.path}' cannot be read ({reason(e)}); "
                                  "the file is damaged or incomplete") from None


@contextlib.contextmanager
def _one_name_table() -> Iterator[None]:
    """transformers' `get_gguf_hf_weights_map` recurses over every module and rebuilds gguf's name table for each
    (18 ms x 397 modules for SmolLM2: 7 s); the table depends only on (architecture, blocks), so build it once."""
    import gguf

    build = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.cache(build)  # imported from gguf at each call, so this one is used
    try:
        yield
    finally:
        gguf.get_tensor_name_map = build


def _untouched(processor: Any, gguf_name: str) -> bool:
    """Whether transformers' processor leaves this tensor as dequantized, so it can be read in row chunks: the
    generic one leaves all, llama's reorders only the q/k rows; any other is given each tensor whole."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

    if type(processor) is TensorProcessor:
        return True
    return type(processor) is LlamaTensorProcessor and ".attn_q." not in gguf_name and ".attn_k." not in gguf_name


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or hf_name(name) == p or hf_name(name).startswith(p + ".") for p in prefixes)


def _tied(model: nn.Module) -> dict[str, str]:
    """{tied parameter: the parameter it shares}, in Hugging Face names (e.g. lm_head.weight -> embed)."""
    base = hf_of(model) if hasattr(model, "peft_config") else model
    get = getattr(base, "get_expanded_tied_weights_keys", None)
    return dict(get(all_submodels=True)) if get is not None and config_of(base).tie_word_embeddings else {}


def materialize(model: nn.Module, weights: WeightFile, prefixes: Iterable[str], device: torch.device,
                dtype: torch.dtype) -> int:
    """Read every still-`meta` parameter under `prefixes` (HF module paths, e.g. `model.layers.3`) from
    `weights`; a parameter tied to another is read once and shared. Returns the bytes materialized."""
    prefixes = list(prefixes)
    tied = _tied(model)
    named = dict(model.named_parameters(remove_duplicate=False))
    by_hf = {hf_name(n): n for n in named}
    loaded: dict[str, nn.Parameter] = {}
    nbytes = 0
    for name, p in named.items():
        if p.device.type != "meta" or not _under(name, prefixes):
            continue
        src = tied.get(hf_name(name), hf_name(name))
        if src not in loaded:
            shared = named[by_hf[src]] if src in by_hf else None
            if shared is not None and shared.device.type != "meta":
                loaded[src] = shared
            else:
                loaded[src] = nn.Parameter(weights.read(src if src in weights.names else hf_name(name), dtype,
                                                        device), requires_grad=p.requires_grad)
                nbytes += loaded[src].numel() * loaded[src].element_size()
        owner, attr = _owner(model, name)
        owner._parameters[attr] = loaded[src]
    for s in [s for s in loaded if s in by_hf and named[by_hf[s]].device.type == "meta"]:
        owner, attr = _owner(model, by_hf[s])  # the source of a tie reached only through its target (the head)
        owner._parameters[attr] = loaded[s]
    return nbytes


def release(model: nn.Module, prefixes: Iterable[str]) -> None:
    """Put the base (non-LoRA) parameters under `prefixes` back on `meta` (their memory is freed once no part
    holds them)."""
    prefixes = list(prefixes)
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if p.device.type != "meta" and _under(name, prefixes) and "lora_" not in name:
            owner, attr = _owner(model, name)
            owner._parameters[attr] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)


def held_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters that are not on `meta` (each shared tensor once)."""
    seen = {id(p): p for p in model.parameters() if p.device.type != "meta"}
    return sum(p.numel() * p.element_size() for p in seen.values())
