"""Configuration models shared by the operator and the trainer (pydantic only, never torch)."""

from dspark_trainer.config.base import ConfigModel
from dspark_trainer.config.draft import DraftOptions, MarkovHeadType
from dspark_trainer.config.training import (
    CaptureClientConfig,
    CheckpointConfig,
    DatasetConfig,
    EvalConfig,
    MetricsConfig,
    OptimizerConfig,
    ScheduleConfig,
    TargetConfig,
    TrainerConfig,
)
from dspark_trainer.config.transport import TransportConfig, TransportProtocol

__all__ = [
    "CaptureClientConfig",
    "CheckpointConfig",
    "ConfigModel",
    "DatasetConfig",
    "DraftOptions",
    "EvalConfig",
    "MarkovHeadType",
    "MetricsConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TargetConfig",
    "TrainerConfig",
    "TransportConfig",
    "TransportProtocol",
]
