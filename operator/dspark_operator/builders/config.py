"""The ConfigMap with the rendered TrainerConfig (read by trainer ranks and the capture plugin)."""

from __future__ import annotations

import posixpath

import yaml
from dspark_trainer.config import (
    CaptureClientConfig,
    CheckpointConfig,
    DatasetConfig,
    MetricsConfig,
    TargetConfig,
    TrainerConfig,
    TransportConfig,
)

from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.builders.common import BuildContext, Manifest, child_names, metadata, with_hash
from dspark_operator.builders.regenerate_job import dataset_path_for_training
from dspark_operator.constants import (
    COMPONENT_CONFIG,
    MOONCAKE_METADATA_PORT,
    MOONCAKE_RPC_PORT,
    TRAINER_CONFIG_FILE,
)


def render_trainer_config(spec: DSparkTrainingJobSpec, *, name: str, namespace: str) -> TrainerConfig:
    """The TrainerConfig a job's trainer runs with (validated: raises pydantic.ValidationError)."""
    names = child_names(name)
    mooncake_host = f"{names.mooncake}.{namespace}.svc"
    inference_url = f"http://{names.inference}.{namespace}.svc:{spec.inference.port}"
    out = spec.trainer.output
    ckpt = spec.trainer.checkpoint
    return TrainerConfig(
        target=TargetConfig(model=spec.target.model, revision=spec.target.revision, dtype=spec.target.dtype),
        draft=spec.draft,
        # With dataset.regenerate the trainer reads the regenerated output (written by the regeneration Job).
        dataset=DatasetConfig.model_validate(
            {**spec.dataset.model_dump(exclude={"claim_name", "regenerate"}), "path": dataset_path_for_training(spec)}
        ),
        optimizer=spec.trainer.optimizer,
        schedule=spec.trainer.schedule,
        checkpoint=CheckpointConfig(
            dir=posixpath.join(out.mount_path, out.checkpoint_dir),
            interval_steps=ckpt.interval_steps,
            keep_last=ckpt.keep_last,
        ),
        eval=spec.trainer.eval,
        capture=CaptureClientConfig(
            endpoints=[inference_url],
            window=spec.trainer.capture.window,
            request_timeout_seconds=spec.trainer.capture.request_timeout_seconds,
            max_retries=spec.trainer.capture.max_retries,
        ),
        transport=TransportConfig(
            protocol=spec.transport.protocol,
            master_address=f"{mooncake_host}:{MOONCAKE_RPC_PORT}",
            metadata_server=f"http://{mooncake_host}:{MOONCAKE_METADATA_PORT}/metadata",
            local_hostname=None,
            device_names=spec.transport.device_names,
            global_segment_size=spec.transport.global_segment_size,
            local_buffer_size=spec.transport.local_buffer_size,
            key_ttl_seconds=spec.transport.key_ttl_seconds,
        ),
        metrics=MetricsConfig(enabled=spec.metrics.enabled, port=spec.metrics.port),
        output_dir=posixpath.join(out.mount_path, out.draft_dir),
    )


def draft_output_path(spec: DSparkTrainingJobSpec) -> str:
    """Where the trainer writes the exported draft (inside the trainer pods)."""
    return posixpath.join(spec.trainer.output.mount_path, spec.trainer.output.draft_dir)


def build_config_map(ctx: BuildContext) -> Manifest:
    """ConfigMap `<job>-config` with trainer.yaml."""
    config = render_trainer_config(ctx.spec, name=ctx.name, namespace=ctx.namespace)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when available (much faster)
    text = yaml.dump(config.to_wire(), Dumper=dumper, sort_keys=False)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(ctx, ctx.names.config, COMPONENT_CONFIG),
            "data": {TRAINER_CONFIG_FILE: text},
        }
    )
