"""After export: publish the draft to ``export.destination`` (rank 0), once per draft directory."""

from __future__ import annotations

import logging

from dspark_trainer.config.job import JobConfig
from dspark_trainer.publish import publish_draft
from dspark_trainer.publish.publisher import published_uri

log = logging.getLogger(__name__)


def publish_export(config: JobConfig, draft_dir: str) -> str | None:
    """Publish the exported draft when the job asks for it; returns the URI (None: no destination).

    A draft published to the same destination before (a restart after a completed run) is not uploaded
    again. Errors propagate: the run is not complete until its draft is where the user wants it.
    """
    export = config.export
    if export.destination is None:
        return None
    done = published_uri(draft_dir)
    if done is not None and done.rstrip("/") == export.destination.rstrip("/"):
        log.info("draft already published to %s", done)
        return done
    result = publish_draft(draft_dir, export.destination, s3_endpoint_url=export.s3_endpoint_url,
                           s3_region=export.s3_region, credentials_dir=export.credentials_dir)
    return result.uri
