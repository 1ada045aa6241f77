"""A family is one entry (`model/families.py`): its spec and its tiny test model. What the loader and the tests
derive from it, and a model whose config asks for what the family's code does not reproduce, refused."""

import pytest
from transformers import AutoModelForCausalLM

from splitft.model.families import FAMILIES
from splitft.model.loader import ModelSourceError, load, tiny_config
from splitft.model.synthetic import byte_tokenizer


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_builds_its_tiny_model_from_its_own_entry(name):
    config = tiny_config(name)
    assert config.model_type == name and config.vocab_size == 260
    model = AutoModelForCausalLM.from_config(config)
    assert len(model.get_submodule(FAMILIES[name].layers_path)) == 4
    targets = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {t.rsplit(".", 1)[-1] for t in FAMILIES[name].lora_targets} <= targets, "LoRA targets exist"


def test_an_unknown_tiny_family_names_the_known_ones():
    with pytest.raises(ModelSourceError, match="tiny families: llama, qwen2"):
        tiny_config("falcon")


def test_a_gemma_model_with_logit_softcapping_is_refused_at_load(tmp_path):
    """The split head computes plain logits; a model that softcaps them would train on another function."""
    config = tiny_config("gemma3_text")
    config.final_logit_softcapping = 30.0
    config.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="final_logit_softcapping=30.0 \\(needs None\\)"):
        load(str(tmp_path))
