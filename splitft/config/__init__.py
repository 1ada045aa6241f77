"""One typed config tree: YAML file + dotted overrides (`split.cut=3`), all errors reported at once, saved per run.

    cfg = load_config("configs/default.yaml", ["federation.rounds=2", "--split.cut=4"])
    save_config(cfg, run_dir / "config.yaml")

Checks that need the model (cut < number of blocks, max_length <= context) live in `validate_against_model`,
which reads only the model's metadata, so a bad config fails before any weights load. Names that pick a
component (partitioner, codec, policy, dtype, method, device profile) are checked by that component's registry
(`registry.py`), passed in as `checks` by the composition root (`build.load`): this module sits below every
component and imports none of them.
"""

from .load import RENAMED, RETIRED, Check, load_config, save_config, to_dict
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
)
from .validate import BY_CATEGORY, SHAPES, tail_cut, validate, validate_against_model

__all__ = ["BY_CATEGORY", "RENAMED", "RETIRED", "SHAPES", "Check", "Config", "ConfigError", "DataConfig",
           "DeviceConfig", "FederationConfig", "HeterogeneityConfig", "LoraConfig", "MeasureConfig", "MetricsConfig",
           "ModelConfig", "PrivacyConfig", "SplitConfig", "TrainConfig", "TransportConfig", "load_config",
           "save_config", "tail_cut", "to_dict", "validate", "validate_against_model"]
