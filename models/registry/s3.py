"""S3 access for the model registry and backfill: one boto3 client built from ``settings.registry``.

Works with AWS, MinIO and moto (``endpoint_url``). Missing credentials, an unreachable endpoint or a
missing bucket become :class:`S3Error` with a message that says what to set or check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from config.settings import RegistrySettings

CREDENTIALS_HINT = (
    "set CORESTREAM_REGISTRY__ACCESS_KEY_ID and CORESTREAM_REGISTRY__SECRET_ACCESS_KEY "
    "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an AWS profile)"
)


class S3Error(RuntimeError):
    """S3 cannot be used as configured; the message says why."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_url(value: str) -> bool:
    return value.startswith("s3://")


def parse_s3_url(value: str) -> S3Url:
    """``s3://bucket/key/part`` -> ``S3Url("bucket", "key/part")``."""
    if not is_s3_url(value):
        raise S3Error(f"not an s3:// URL: {value!r}")
    bucket, _, key = value[len("s3://"):].partition("/")
    if not bucket:
        raise S3Error(f"S3 URL has no bucket: {value!r}")
    return S3Url(bucket, key)


def s3_client(settings: RegistrySettings) -> Any:
    """A boto3 S3 client for ``settings``; raises :class:`S3Error` if no credentials can be found."""
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id, aws_secret_access_key=secret, region_name=settings.region
    )
    if session.get_credentials() is None:
        raise S3Error(f"no S3 credentials found: {CREDENTIALS_HINT}")
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                    s3={"addressing_style": "path"} if settings.endpoint_url else None)
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in {"NoSuchKey", "404", "NotFound"}


def is_precondition_failed(exc: ClientError) -> bool:
    return error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}


@contextlib.contextmanager
def s3_errors(what: str, endpoint_url: str | None = None) -> Iterator[None]:
    """Turn boto errors other than the ones the caller handles into one-line :class:`S3Error`."""
    try:
        yield
    except NoCredentialsError:
        raise S3Error(f"{what}: no S3 credentials found: {CREDENTIALS_HINT}") from None
    except EndpointConnectionError:
        raise S3Error(f"{what}: cannot reach S3 at {endpoint_url or 'the AWS endpoint'}") from None
    except ClientError as exc:
        code = error_code(exc)
        if code == "NoSuchBucket":
            bucket = exc.response.get("Error", {}).get("BucketName", "")
            raise S3Error(
                f"{what}: bucket {bucket!r} does not exist (create it or set CORESTREAM_REGISTRY__BUCKET)"
            ) from None
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
            raise S3Error(f"{what}: S3 refused the credentials ({code}): {CREDENTIALS_HINT}") from None
        raise S3Error(f"{what}: S3 error {code}: {exc}") from None
    except BotoCoreError as exc:
        raise S3Error(f"{what}: {exc}") from None
