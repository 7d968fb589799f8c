"""Configuration models shared by the operator and the trainer (pydantic only, never torch).

``JobConfig`` (``config/job.py``) is the pod contract: the one rendered config every role of a job reads."""

from dspark_trainer.config.base import ConfigModel
from dspark_trainer.config.draft import DraftOptions, MarkovHeadType
from dspark_trainer.config.job import (
    JOB_CONFIG_ENV,
    JOB_CONFIG_PATH,
    InferenceConfig,
    InferenceEngine,
    JobConfig,
    JobIdentity,
    ReferenceServerConfig,
    load_job_config,
)
from dspark_trainer.config.regenerate import RegenerateSettings
from dspark_trainer.config.training import (
    CaptureClientConfig,
    CaptureSettings,
    CheckpointConfig,
    CheckpointSettings,
    ConfigError,
    DatasetConfig,
    EvalConfig,
    EvaluationConfig,
    ExportConfig,
    ExportSettings,
    MetricsConfig,
    OptimizerConfig,
    RuntimeConfig,
    ScheduleConfig,
    TargetConfig,
)
from dspark_trainer.config.transport import TransportConfig, TransportProtocol, TransportSettings

__all__ = [
    "JOB_CONFIG_ENV",
    "JOB_CONFIG_PATH",
    "CaptureClientConfig",
    "CaptureSettings",
    "CheckpointConfig",
    "CheckpointSettings",
    "ConfigError",
    "ConfigModel",
    "DatasetConfig",
    "DraftOptions",
    "EvalConfig",
    "EvaluationConfig",
    "ExportConfig",
    "ExportSettings",
    "InferenceConfig",
    "InferenceEngine",
    "JobConfig",
    "JobIdentity",
    "MarkovHeadType",
    "MetricsConfig",
    "OptimizerConfig",
    "ReferenceServerConfig",
    "RegenerateSettings",
    "RuntimeConfig",
    "ScheduleConfig",
    "TargetConfig",
    "TransportConfig",
    "TransportProtocol",
    "TransportSettings",
    "load_job_config",
]
