"""Only the weights a party runs: a model skeleton on the `meta` device, filled tensor by tensor from its file.

A deployed client at cut c holds the embeddings and blocks [0, c); the server holds blocks [first, L), the final
norm and the head (and the embedding matrix when the head is tied to it). Loading the whole file and dropping
the rest would make every process peak at the whole model (SmolLM2-135M: 1.17 GB RSS for a cut-1 client), so:

    model = skeleton(source, dtype)              # every parameter on `meta` (0 bytes); buffers real
    weights = WeightFile.open(source, model)     # safetensors: lazy per-tensor reads; GGUF: memory-mapped reader
    materialize(model, weights, prefixes, device, dtype)   # read + dequantize only the tensors under `prefixes`
    release(model, prefixes)                     # back to meta: a client whose cut shrank frees those blocks
Parameter names are the Hugging Face model's; in a PEFT-wrapped model the frozen base weights carry the
`base_model.model.` prefix and `.base_layer.`, which `hf_name` strips. Tied parameters (a head tied to the
embeddings) are one Parameter object in both places, as `from_pretrained` leaves them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import UserError, reason


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


class WeightFile:
    """Reads single tensors, by Hugging Face name, from a safetensors folder or a GGUF file."""

    def __init__(self, path: Path, read: Any, names: Iterable[str]):
        self.path, self._read, self.names = path, read, set(names)

    @classmethod
    def open(cls, path: Path, model: nn.Module) -> "WeightFile":
        """`path`: a .gguf file or a folder with model.safetensors (or a sharded index); `model`: its skeleton,
        which names the tensors (GGUF names map to it through transformers' own table)."""
        if path.suffix == ".gguf":
            return cls._gguf(path, model)
        return cls._safetensors(path)

    @classmethod
    def _safetensors(cls, folder: Path) -> "WeightFile":
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

        def read(name: str) -> torch.Tensor:
            with safe_open(str(where[name]), "pt") as f:  # memory-mapped: only this tensor's pages are read
                return f.get_tensor(name)

        return cls(folder, read, where)

    @classmethod
    def _gguf(cls, path: Path, model: nn.Module) -> "WeightFile":
        import numpy as np
        from gguf import GGUFReader, dequantize
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        try:
            reader = GGUFReader(str(path))  # memory-mapped; tensors are views into the file
            arch = str(reader.fields["general.architecture"].contents())
        except Exception as e:
            raise WeightFileError(f"model.source: '{path}' is not a readable GGUF file ({reason(e)})") from None
        processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
        to_hf = get_gguf_hf_weights_map(model, processor)
        tensors = {to_hf[t.name]: t for t in reader.tensors if t.name in to_hf}

        def read(name: str) -> torch.Tensor:
            t = tensors[name]
            # llama's q/k rows are permuted in GGUF; the processor undoes it exactly as from_pretrained does
            weights = processor.process(weights=dequantize(t.data, t.tensor_type), name=t.name,
                                        tensor_key_mapping=to_hf, parsed_parameters={}).weights
            return torch.from_numpy(np.ascontiguousarray(weights))

        return cls(path, read, tensors)

    def read(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if name not in self.names:
            raise WeightFileError(f"model.source: '{self.path}' has no tensor '{name}'")
        try:
            return self._read(name).to(device=device, dtype=dtype)
        except Exception as e:  # a truncated or damaged file fails only when its bytes are read
            raise WeightFileError(f"model.source: tensor '{name}' of '{self.path}' cannot be read ({reason(e)}); "
                                  "the file is damaged or incomplete") from None


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or hf_name(name) == p or hf_name(name).startswith(p + ".") for p in prefixes)


def _tied(model: nn.Module) -> dict[str, str]:
    """{tied parameter: the parameter it shares}, in Hugging Face names (e.g. lm_head.weight -> embed)."""
    base = model.base_model.model if hasattr(model, "peft_config") else model
    get = getattr(base, "get_expanded_tied_weights_keys", None)
    return dict(get(all_submodels=True)) if get is not None and base.config.tie_word_embeddings else {}


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
