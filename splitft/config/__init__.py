"""One typed config tree: YAML file + dotted overrides (`split.cut=3`), all errors reported at once, saved per run.

    cfg = load_config("configs/default.yaml", ["federation.rounds=2", "--split.cut=4"])
    save_config(cfg, run_dir / "config.yaml")

Checks that need the model (cut < number of blocks, max_length <= context) live in `validate_against_model`,
which reads only the model's metadata, so a bad config fails before any weights load. Names that pick a
component (partitioner, codec, policy, dtype, method, device profile) are checked by that component's registry
(`registry.py`), passed in as `checks` by the composition root (`build.load`): this module sits below every
component and imports none of them.
"""

from .audience import AUDIENCES, CLIENT, EACH, SERVER, SHARED, SIMULATION
from .load import RENAMED, RETIRED, Check, load_config, save_config, to_dict
from .parties import ClientConfig, CodecConfig, ServerConfig
from .schema import (
    Config,
    ConfigError,
    DataConfig,
    DeviceConfig,
    FederationConfig,
    HeterogeneityConfig,
    LoraConfig,
    MeasureConfig,
    MetricsConfig,
    ModelConfig,
    PrivacyConfig,
    SplitConfig,
    TrainConfig,
    TransportConfig,
    keys_for,
)
from .validate import BY_CATEGORY, SHAPES, tail_cut, validate, validate_against_model

__all__ = ["AUDIENCES", "BY_CATEGORY", "CLIENT", "EACH", "RENAMED", "RETIRED", "SERVER", "SHAPES", "SHARED",
           "SIMULATION", "Check", "ClientConfig", "CodecConfig", "Config", "ConfigError", "DataConfig",
           "DeviceConfig", "FederationConfig", "HeterogeneityConfig", "LoraConfig", "MeasureConfig", "MetricsConfig",
           "ModelConfig", "PrivacyConfig", "ServerConfig", "SplitConfig", "TrainConfig", "TransportConfig",
           "keys_for", "load_config", "save_config", "tail_cut", "to_dict", "validate", "validate_against_model"]
