"""Pure manifest builders: every child of a job is a function of (job identity, spec, operator settings).

Nothing here talks to the API server; the reconciler applies what these functions return.
"""

from dspark_operator.builders.children import build_children, workload_replicas
from dspark_operator.builders.common import BuildContext, ChildNames, child_names
from dspark_operator.builders.config import render_job_config
from dspark_operator.builders.regenerate_job import build_regenerate_job

__all__ = [
    "BuildContext",
    "ChildNames",
    "build_children",
    "build_regenerate_job",
    "child_names",
    "render_job_config",
    "workload_replicas",
]
