"""Which spec a job's children are built from (pure).

A generation is *accepted* once it passed every check: the pydantic model and the operator's rules
(:func:`dspark_operator.api.job.parse_spec`) and a server-side dry run of every child built from it, which the
reconciler runs before anything is applied. The accepted spec and its generation are kept in the status
(`acceptedSpec`, `acceptedGeneration`). A later generation that fails a check is *rejected*: nothing acts on it,
the job keeps working from the accepted spec and reports condition SpecRejected naming the field. A job that was
never accepted has nothing to fall back to and fails (InvalidSpec) before any child exists.
"""

from __future__ import annotations

import dataclasses

from dspark_operator.api.job import InvalidSpec, JobView, parse_accepted_spec
from dspark_operator.api.spec import DSparkTrainingJobSpec


@dataclasses.dataclass(frozen=True)
class SpecChoice:
    """The spec to work from, and what to do about the latest generation."""

    spec: DSparkTrainingJobSpec | None  # None: nothing usable (the job fails with `rejected`)
    generation: int | None  # the generation of `spec`
    candidate: bool  # `spec` is the latest generation, not accepted yet: validate the whole child set first
    rejected: InvalidSpec | None  # why the latest generation is not used


def accepted(job: JobView) -> tuple[DSparkTrainingJobSpec | None, int | None]:
    """The last accepted spec and its generation from the status (None, None when there is none usable)."""
    generation = job.status.accepted_generation
    if generation is None:
        return None, None
    spec = parse_accepted_spec(job.status.accepted_spec)
    return (spec, generation) if spec is not None else (None, None)


def choose_spec(job: JobView, *, rejected: InvalidSpec | None = None) -> SpecChoice:
    """The spec to work from. `rejected`: a problem found with the latest generation beyond its parse (the dry run)."""
    problem = job.invalid or rejected
    last, last_generation = accepted(job)
    if problem is not None:
        if last is not None:  # also when it is this very generation (stricter rules of a newer operator)
            return SpecChoice(last, last_generation, candidate=False, rejected=problem)
        return SpecChoice(None, None, candidate=False, rejected=problem)
    return SpecChoice(job.spec, job.generation, candidate=last_generation != job.generation, rejected=None)


def effective_view(job: JobView, choice: SpecChoice) -> JobView:
    """The job as the rules see it: the chosen spec; `invalid` only when there is nothing to fall back to."""
    fallback = choice.spec is not None and choice.rejected is not None
    return dataclasses.replace(
        job,
        spec=choice.spec,
        invalid=None if choice.spec is not None else choice.rejected,
        spec_generation=choice.generation,
        rejected=choice.rejected if fallback else None,
    )


def accept(job: JobView) -> JobView:
    """The job with its latest generation recorded as accepted (status.acceptedGeneration / acceptedSpec)."""
    status = job.status.model_copy(
        update={"accepted_generation": job.generation, "accepted_spec": dict(job.raw_spec)}, deep=True
    )
    return dataclasses.replace(job, status=status, spec_generation=job.generation)
