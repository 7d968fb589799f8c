"""The DSparkTrainingJob API (group dspark.io, version v1alpha1): spec and status models."""

from dspark_operator.api.job import InvalidSpec, JobView, parse_job
from dspark_operator.api.spec import DSparkTrainingJobSpec
from dspark_operator.api.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    DSparkTrainingJobStatus,
    Phase,
)

__all__ = [
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DSparkTrainingJobSpec",
    "DSparkTrainingJobStatus",
    "InvalidSpec",
    "JobView",
    "Phase",
    "parse_job",
]
