"""Publishing an exported draft where users keep their models: S3-compatible storage (``s3://``) or the
Hugging Face Hub (``hf://``). ``publish_draft`` is the one entry point (trainer and ``dspark publish``)."""

from dspark_trainer.publish.destination import Destination, HubDestination, S3Destination, parse_destination
from dspark_trainer.publish.publisher import PublishResult, publish_draft

__all__ = ["Destination", "HubDestination", "PublishResult", "S3Destination", "parse_destination", "publish_draft"]
