"""Files never execute code: configs are read with yaml.safe_load, model folders only from safetensors (a pickled
pytorch_model.bin is refused, not unpickled), checkpoints are safetensors + JSON."""

import pytest
import torch

from splitft.config import ConfigError, load_config
from splitft.model.loader import ModelSourceError, load, tiny_config
from splitft.model.synthetic import byte_tokenizer


def test_a_yaml_config_with_a_python_object_tag_is_refused(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("model: !!python/object/apply:os.system ['echo owned > /tmp/owned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_model_folder_with_only_pickled_weights_is_refused_without_unpickling(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    tiny_config("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    torch.save({"x": Boom()}, folder / "pytorch_model.bin")  # would run code if unpickled
    with pytest.raises(ModelSourceError, match="safetensors"):
        load(str(folder))


def test_a_model_folder_without_a_tokenizer_is_a_clear_error(tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="cannot load a tokenizer"):
        load(str(tmp_path))
