"""Per-family knowledge of causal-LM layouts: where the embeddings, blocks and head live, and how to run them.

A split model needs the forward pass in three pieces (embed -> blocks -> head) that can run in different
processes. Each family reproduces its Hugging Face `forward` exactly (same position ids, same causal mask,
same dropout placement), so split training equals unsplit training; `tests/unit/test_split.py` pins it.
Only right padding is supported (our collator pads right), so position ids are `arange(T)` on real tokens.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """Where a family keeps its modules, as dotted paths inside the `*ForCausalLM` model.

    Attributes:
        name: family key used in config and logs (`llama`, `qwen2`, `gpt2`, `opt`, `gpt_neo`).
        embed_paths: modules that only the client holds (token + position embeddings).
        layers_path: the `ModuleList` of transformer blocks.
        head_paths: modules after the last block that only the server holds (final norm, LM head).
        lora_targets: default LoRA target module suffixes (attention projections, as in the paper).
        final_norm: everything between the last block and the LM head (the norm; OPT also projects out), so the
            loss can run the head itself, a chunk of tokens at a time (`loss.head_loss`).
        fan_in_fan_out: True when the targets are GPT-2 `Conv1D` layers (weight stored transposed).
        tiny: the family's 4-block, d=32 test model: `AutoConfig.for_model(name, **tiny)` plus the byte
            tokenizer's 260-word vocabulary (`loader.tiny_config`); every family's exactness tests run on it.
        unsupported: config attributes this code does not reproduce, with the value it needs (a model whose
            config sets another is refused at load, e.g. Gemma's final logit softcapping).
    """

    name: str
    embed_paths: tuple[str, ...]
    layers_path: str
    head_paths: tuple[str, ...]
    lora_targets: tuple[str, ...]
    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    context: Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, Any]]
    run_block: Callable[[nn.Module, int, torch.Tensor, dict[str, Any]], torch.Tensor]
    final_norm: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    fan_in_fan_out: bool = False
    tiny: dict[str, Any] = field(default_factory=dict)
    unsupported: dict[str, Any] = field(default_factory=dict)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks (`layers_path`)."""
        return cast(nn.ModuleList, model.get_submodule(self.layers_path))

    def lm_head(self, model: nn.Module) -> nn.Module:
        """The head's linear layer (every family keeps it at `lm_head`, frozen, no LoRA)."""
        return model.get_submodule("lm_head")

    def head(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H) after the last block -> logits (B, T, V)."""
        return self.lm_head(model)(self.final_norm(model, hidden))


def _positions(hidden: torch.Tensor) -> torch.Tensor:
    """(1, T) position ids for right-padded input, as HF builds them without a cache."""
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


@functools.cache
def _no_cache(mask_fn: Callable[..., Any]) -> dict[str, None]:
    """The 'no KV cache' argument of a transformers mask function, which must be given: `cache` in current 5.x,
    `past_key_values` in the releases before the rename (deprecated there, removed in 5.40)."""
    return {"cache": None} if "cache" in inspect.signature(mask_fn).parameters else {"past_key_values": None}


def _mask(mask_fn: Callable[..., Any], config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor,
          **kw: Any) -> Any:
    return mask_fn(config=config, inputs_embeds=hidden, attention_mask=attention_mask, **_no_cache(mask_fn), **kw)


def _causal_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> Any:
    from transformers.masking_utils import create_causal_mask

    return _mask(create_causal_mask, config, hidden, attention_mask, **kw)


def _get(model: nn.Module, path: str) -> Any:
    """The submodule at `path`; Any: its attributes (layers, embeddings, config) are the family's own."""
    return model.get_submodule(path)


def config_of(model: nn.Module) -> Any:
    """The HF model's config (Any: its fields are the family's)."""
    return model.config


def hf_of(peft_model: nn.Module) -> nn.Module:
    """The `*ForCausalLM` inside a PeftModel (`base_model.model`)."""
    return peft_model.get_submodule("base_model.model")


def embeddings(model: nn.Module) -> nn.Module:
    """An HF model's input embedding layer."""
    hf: Any = model  # transformers' PreTrainedModel method, untyped on nn.Module
    return cast(nn.Module, hf.get_input_embeddings())


def embedding_table(model: nn.Module) -> torch.Tensor:
    """The (V, H) weight of `embeddings(model)`."""
    return cast(torch.Tensor, embeddings(model).weight)


# --- Llama / Qwen2 / Mistral: rotary positions, RMSNorm, per-layer mask kinds --------------------------


def _llama_embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return _get(model, "model.embed_tokens")(input_ids)


def _llama_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """Llama and Qwen2: a mask per kind in `config.layer_types` (Qwen2 can slide on some layers)."""
    return _rotary_context(model, hidden, attention_mask, getattr(config_of(model), "layer_types", None) or [])


def _mistral_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """Mistral, as HF's MistralModel: every layer slides when `config.sliding_window` is set, whatever
    `config.layer_types` says."""
    n_layer = len(_get(model, "model.layers"))
    sliding = getattr(config_of(model), "sliding_window", None) is not None
    return _rotary_context(model, hidden, attention_mask, ["sliding_attention"] * n_layer if sliding else [])


def _rotary_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    layer_types: list[str], per_kind: bool = False) -> dict[str, Any]:
    """Rotary embeddings (one per attention kind with `per_kind`, as Gemma 3 rotates local layers with its own
    base frequency), position ids and the causal mask of each attention kind the layers use."""
    config = config_of(model)
    pos = _positions(hidden)
    masks = {"full_attention": _causal_mask(config, hidden, attention_mask, position_ids=pos)}
    if "sliding_attention" in layer_types:
        from transformers.masking_utils import create_sliding_window_causal_mask

        masks["sliding_attention"] = _mask(create_sliding_window_causal_mask, config, hidden, attention_mask,
                                           position_ids=pos)
    rope = _get(model, "model.rotary_emb")
    rotary = {kind: rope(hidden, pos, kind) for kind in set(layer_types)} if per_kind else \
        rope(hidden, position_ids=pos)
    return {"masks": masks, "position_ids": pos, "rotary": rotary, "layer_types": layer_types, "per_kind": per_kind}


def _llama_block(model: nn.Module, i: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
    kind = ctx["layer_types"][i] if ctx["layer_types"] else "full_attention"
    layer = _get(model, "model.layers")[i]
    rotary = ctx["rotary"][kind] if ctx["per_kind"] else ctx["rotary"]
    return layer(
        hidden, attention_mask=ctx["masks"][kind], position_embeddings=rotary,
        position_ids=ctx["position_ids"], use_cache=False,
    )


def _phi3_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """Phi-3, as HF's Phi3Model: every layer slides when `config.sliding_window` is set."""
    return _mistral_context(model, hidden, attention_mask)


def _gemma3_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    """Gemma 3, as HF's Gemma3TextModel: a mask and a rotary embedding per kind in `config.layer_types` (local
    layers slide and rotate with their own base frequency)."""
    return _rotary_context(model, hidden, attention_mask, list(config_of(model).layer_types), per_kind=True)


def _llama_norm(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return _get(model, "model.norm")(hidden)


# --- GPT-2 / GPT-Neo: learned absolute positions, LayerNorm, embedding dropout -------------------------


def _gpt_embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    tr = _get(model, "transformer")
    hidden = tr.wte(input_ids)
    return tr.drop(hidden + tr.wpe(_positions(hidden)))


def _gpt_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    pos = _positions(hidden)
    return {"mask": _causal_mask(config_of(model), hidden, attention_mask, position_ids=pos), "position_ids": pos}


def _gpt2_block(model: nn.Module, i: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
    block = _get(model, "transformer.h")[i]
    return block(hidden, None, ctx["mask"], None, use_cache=False, position_ids=ctx["position_ids"])


def _gpt_neo_block(model: nn.Module, i: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
    block = _get(model, "transformer.h")[i]
    return block(hidden, layer_past=None, attention_mask=ctx["mask"], use_cache=False)[0]


def _gpt_norm(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return _get(model, "transformer.ln_f")(hidden)


# --- OPT: learned positions offset by 2, optional project_in / project_out ----------------------------


def _opt_embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    dec = _get(model, "model.decoder")
    hidden = dec.embed_tokens(input_ids)
    if dec.project_in is not None:
        hidden = dec.project_in(hidden)
    # As HF: positions = cumsum(mask) - 1 on real tokens (== arange for right padding), -1 on padding.
    position_ids = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()
    return hidden + dec.embed_positions(attention_mask, 0, position_ids=position_ids)


def _opt_context(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
    pos = _positions(hidden)
    return {"mask": _causal_mask(config_of(model), hidden, attention_mask), "position_ids": pos}


def _opt_block(model: nn.Module, i: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
    layer = _get(model, "model.decoder.layers")[i]
    return layer(hidden, attention_mask=ctx["mask"], position_ids=ctx["position_ids"], use_cache=False)


def _opt_norm(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    dec = _get(model, "model.decoder")
    if dec.final_layer_norm is not None:
        hidden = dec.final_layer_norm(hidden)
    if dec.project_out is not None:
        hidden = dec.project_out(hidden)
    return hidden


_LLAMA_KW: dict[str, Any] = dict(
    embed_paths=("model.embed_tokens",), layers_path="model.layers",
    head_paths=("model.norm", "lm_head"), lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    embed=_llama_embed, context=_llama_context, run_block=_llama_block, final_norm=_llama_norm,
)
_GPT_KW: dict[str, Any] = dict(
    embed_paths=("transformer.wte", "transformer.wpe"), layers_path="transformer.h",
    head_paths=("transformer.ln_f", "lm_head"), embed=_gpt_embed, context=_gpt_context, final_norm=_gpt_norm,
)

# The tiny test models: 4 blocks of width 32, 4 heads (2 key/value heads where the family has them), no dropout;
# a sliding window shorter than the test sequences wherever the family slides, so that path runs.
_TINY_ROTARY: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, attention_dropout=0.0)

FAMILIES: dict[str, Family] = {
    "llama": Family(name="llama", **_LLAMA_KW, tiny=_TINY_ROTARY),
    "qwen2": Family(name="qwen2", **_LLAMA_KW, tiny=_TINY_ROTARY),
    "qwen3": Family(name="qwen3", **_LLAMA_KW, tiny={**_TINY_ROTARY, "head_dim": 8}),  # q/k norms: in the layer
    "mistral": Family(name="mistral", **{**_LLAMA_KW, "context": _mistral_context},
                      tiny={**_TINY_ROTARY, "sliding_window": 4}),
    "phi3": Family(name="phi3", **{**_LLAMA_KW, "context": _phi3_context, "lora_targets": ("qkv_proj", "o_proj")},
                   tiny={**_TINY_ROTARY, "sliding_window": 4, "tie_word_embeddings": False, "resid_pdrop": 0.0,
                         "embd_pdrop": 0.0}),
    "gemma3_text": Family(
        name="gemma3_text", **{**_LLAMA_KW, "context": _gemma3_context},
        tiny={**_TINY_ROTARY, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 4,
              "layer_types": ["sliding_attention", "full_attention"] * 2},
        unsupported={"final_logit_softcapping": None, "use_bidirectional_attention": False}),
    "gpt2": Family(name="gpt2", lora_targets=("attn.c_attn", "attn.c_proj"), run_block=_gpt2_block,
                   fan_in_fan_out=True, **_GPT_KW,
                   tiny=dict(n_embd=32, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0)),
    "gpt_neo": Family(name="gpt_neo", lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
                      run_block=_gpt_neo_block, **_GPT_KW,
                      tiny=dict(hidden_size=32, num_layers=4, num_heads=4, max_position_embeddings=256,
                                attention_types=[[["global", "local"], 2]], window_size=8, embed_dropout=0.0,
                                attention_dropout=0.0, resid_dropout=0.0)),
    "opt": Family(
        name="opt", embed_paths=("model.decoder.embed_tokens", "model.decoder.embed_positions",
                                 "model.decoder.project_in"),
        layers_path="model.decoder.layers",
        head_paths=("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head"),
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
        embed=_opt_embed, context=_opt_context, run_block=_opt_block, final_norm=_opt_norm,
        tiny=dict(hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                  max_position_embeddings=256, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                  activation_dropout=0.0, layerdrop=0.0),
    ),
}


def unsupported_settings(config: Any) -> list[str]:
    """What of an HF config this code would not reproduce (`Family.unsupported`), one 'key=value (needs v)' each."""
    fam = FAMILIES[config.model_type]
    return [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in fam.unsupported.items()
            if getattr(config, k, v) != v]


def family_for(model_type: str) -> Family:
    """The `Family` for an HF `config.model_type`.

    Raises:
        ValueError: the model type is not one we know how to split.
    """
    if model_type not in FAMILIES:
        raise ValueError(
            f"model family '{model_type}' is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
