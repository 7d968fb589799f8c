"""The job's ConfigMap: the rendered job config, the one contract every pod of the job reads.

Every pod mounts the ConfigMap at /etc/dspark and finds the file through $DSPARK_JOB_CONFIG; the
trainer, the capture servers (SGLang plugin or reference server) and the Mooncake master each load
it with `dspark_trainer.config.load_job_config`.
"""

from __future__ import annotations

import re

import yaml
from dspark_trainer.config import (
    CaptureClientConfig,
    CheckpointConfig,
    DatasetConfig,
    ExportConfig,
    InferenceConfig,
    JobConfig,
    JobIdentity,
    MetricsConfig,
    TargetConfig,
    TransportConfig,
    TransportSettings,
)
from dspark_trainer.config.job import JOB_CONFIG_FILE

from dspark_operator.api.paths import checkpoint_output_path, dataset_path_for_training, draft_output_path
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.builders.common import BuildContext, Manifest, metadata, with_hash
from dspark_operator.constants import (
    COMPONENT_CONFIG,
    MOONCAKE_METADATA_PORT,
    MOONCAKE_METRICS_PORT,
    MOONCAKE_RPC_PORT,
    PUBLISH_CREDENTIALS_MOUNT,
)


def render_inference_config(spec: DSparkTrainingJobSpec) -> InferenceConfig:
    """The job config's `inference` section: the spec's shared fields, the context length made explicit."""
    inf = spec.inference
    shared = inf.model_dump(include=set(InferenceConfig.model_fields))
    if inf.context_length is None:
        regen = spec.dataset.regenerate
        extra = regen.max_tokens if regen is not None else 1
        shared["context_length"] = spec.dataset.max_length + extra
    return InferenceConfig.model_validate(shared)


def render_job_config(ctx: BuildContext) -> JobConfig:
    """The JobConfig every pod of the job reads (validated: raises pydantic.ValidationError)."""
    spec, names = ctx.spec, ctx.names
    mooncake_host = ctx.svc_host(names.mooncake)
    inference_url = f"http://{ctx.svc_host(names.inference)}:{spec.inference.port}"
    transport = spec.transport.model_dump(include=set(TransportSettings.model_fields))
    return JobConfig(
        job=JobIdentity(name=ctx.name, namespace=ctx.namespace, uid=ctx.uid),
        target=TargetConfig.model_validate(spec.target.model_dump(include=set(TargetConfig.model_fields))),
        draft=spec.draft,
        # With dataset.regenerate the trainer reads the regenerated output (written by the regeneration Job).
        dataset=DatasetConfig.model_validate(
            {**spec.dataset.model_dump(exclude={"claim_name", "regenerate"}), "path": dataset_path_for_training(spec)}
        ),
        optimizer=spec.trainer.optimizer,
        schedule=spec.trainer.schedule,
        checkpoint=CheckpointConfig(dir=checkpoint_output_path(spec), **spec.trainer.checkpoint.model_dump()),
        eval=spec.trainer.eval,
        evaluation=spec.evaluation,
        inference=render_inference_config(spec),
        capture=CaptureClientConfig(endpoints=[inference_url], **spec.trainer.capture.model_dump()),
        transport=TransportConfig(
            **{**transport, "protocol": ctx.protocol},
            master_address=f"{mooncake_host}:{MOONCAKE_RPC_PORT}",
            metadata_server=f"http://{mooncake_host}:{MOONCAKE_METADATA_PORT}/metadata",
            master_metrics_port=MOONCAKE_METRICS_PORT,
        ),
        metrics=MetricsConfig(
            enabled=spec.metrics.enabled,
            port=spec.metrics.port,
            # Prometheus scrapes the final values (e.g. the evaluation's) before the pods are scaled down.
            final_scrape_timeout_seconds=2 * duration_seconds(spec.metrics.interval) if spec.metrics.enabled else 0,
        ),
        output_dir=draft_output_path(spec),
        export=ExportConfig(
            **spec.trainer.export.model_dump(exclude={"credentials_secret"}),
            credentials_dir=PUBLISH_CREDENTIALS_MOUNT if spec.trainer.export.credentials_secret else None,
        ),
    )


_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str) -> float:
    """A Prometheus duration (`30s`, `1m30s`, `0`) in seconds."""
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def job_config_text(config: JobConfig) -> str:
    """The YAML of a rendered job config, as the ConfigMap carries it."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when available (much faster)
    return str(yaml.dump(config.to_wire(), Dumper=dumper, sort_keys=False))


def build_config_map(ctx: BuildContext) -> Manifest:
    """ConfigMap `<job>-config` with job.yaml."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(ctx, ctx.names.config, COMPONENT_CONFIG),
            "data": {JOB_CONFIG_FILE: job_config_text(render_job_config(ctx))},
        }
    )
