"""Names shared by the API, the builders and the reconciler."""

from __future__ import annotations

from typing import Final

from dspark_trainer.config.job import GROUP as GROUP
from dspark_trainer.config.job import KIND as KIND
from dspark_trainer.config.job import PLURAL as PLURAL
from dspark_trainer.config.job import VERSION as VERSION

API_VERSION: Final = f"{GROUP}/{VERSION}"
SINGULAR: Final = "dsparktrainingjob"
SHORT_NAMES: Final = ("dsj",)
CATEGORIES: Final = ("dspark",)

FIELD_MANAGER: Final = "dspark-operator"
APP_NAME: Final = "dspark"
MANAGED_BY: Final = "dspark-operator"

# Labels on every child (the app.kubernetes.io ones are the recommended set).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
LABEL_JOB_NAME: Final = "dspark.io/job-name"
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
LABEL_POD_INDEX: Final = "apps.kubernetes.io/pod-index"
ANNOTATION_SPEC_HASH: Final = "dspark.io/spec-hash"

COMPONENT_MOONCAKE: Final = "mooncake-master"
COMPONENT_INFERENCE: Final = "inference"
COMPONENT_TRAINER: Final = "trainer"
COMPONENT_CONFIG: Final = "config"
COMPONENT_RBAC: Final = "rbac"
COMPONENT_MONITORING: Final = "monitoring"
COMPONENT_REGENERATE: Final = "regenerate"

# Ports.
MOONCAKE_RPC_PORT: Final = 50051
MOONCAKE_METADATA_PORT: Final = 8080
MOONCAKE_METRICS_PORT: Final = 9003
INFERENCE_PORT: Final = 30000
TRAINER_RDZV_PORT: Final = 29500

# Paths inside pods (the job config's: dspark_trainer.config.job.JOB_CONFIG_DIR/FILE).
MODELS_MOUNT: Final = "/models"
DATA_MOUNT: Final = "/data"
# The Secret of spec.trainer.export.credentialsSecret, in the trainer pods (read-only, one file per key).
PUBLISH_CREDENTIALS_MOUNT: Final = "/var/run/dspark/publish-credentials"


# Default images; the operator deployment may override them (env, see settings.py).
DEFAULT_TRAINER_IMAGE: Final = "ghcr.io/dspark-k8s/dspark-trainer:0.1.0"
DEFAULT_INFERENCE_IMAGE: Final = "ghcr.io/dspark-k8s/dspark-serving:0.1.0"

PODMONITOR_GROUP: Final = "monitoring.coreos.com"
PODMONITOR_VERSION: Final = "v1"
PODMONITOR_PLURAL: Final = "podmonitors"
