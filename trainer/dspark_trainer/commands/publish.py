"""`dspark publish`: copy an exported draft to S3-compatible storage or the Hugging Face Hub.

    dspark publish DRAFT_DIR s3://BUCKET/PREFIX [--endpoint-url URL] [--region REGION]
    dspark publish DRAFT_DIR hf://OWNER/REPO[@REVISION]

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); the endpoint from
--endpoint-url or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (default: AWS in --region). The Hub token from HF_TOKEN.
Prints the final URI.
"""

from __future__ import annotations

import argparse
import sys

PROG = "dspark publish"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("draft", metavar="DRAFT_DIR", help="an exported draft directory (config.json + weights)")
    parser.add_argument("destination", metavar="DEST", help="s3://BUCKET/PREFIX or hf://OWNER/REPO[@REVISION]")
    parser.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph, ...)")
    parser.add_argument("--region", help="S3 region (default: AWS_REGION, else us-east-1)")


def run(args: argparse.Namespace) -> int:
    from dspark_trainer.publish import publish_draft
    from dspark_trainer.publish.s3 import S3Error

    try:
        result = publish_draft(args.draft, args.destination, s3_endpoint_url=args.endpoint_url,
                               s3_region=args.region, progress=lambda line: print(f"{PROG}: {line}"))
    except (OSError, ValueError, S3Error) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(result.uri)
    return 0
