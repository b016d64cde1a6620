"""S3 through boto3's default credential chain (environment, shared files, IRSA web identity, instance roles), plus
a mounted Kubernetes secret. Transient failures (5xx, throttling, timeouts, dropped connections) are retried with
exponential backoff and full jitter; credential and permission errors fail at once with a message naming the bucket
and the permission. No message ever includes a credential.

Settings: the spec's `storage` block (`configure`), else the environment: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for S3-compatible servers, AWS_REGION / AWS_DEFAULT_REGION,
KUBETUNE_S3_ADDRESSING_STYLE (path | virtual | auto; path when a custom endpoint is set), KUBETUNE_S3_SECRET_DIR (a
mounted secret with files AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access-key-id and secret-access-key).
"""

from __future__ import annotations

import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import StorageError, StorageUnavailable

PERMISSION = {"put": "s3:PutObject", "get": "s3:GetObject", "list": "s3:ListBucket", "delete": "s3:DeleteObject"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
          "AllAccessDisabled", "AccountProblem", "NoSuchBucket"}
ATTEMPTS = int(os.environ.get("KUBETUNE_S3_ATTEMPTS", "6"))


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading slash; may be empty

    @classmethod
    def parse(cls, uri: str) -> "S3Uri":
        rest = uri[len("s3://"):] if uri.startswith("s3://") else uri
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket name (s3://bucket/prefix)")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> "S3Uri":
        return S3Uri(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/")))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


_CLIENT: dict[str, Any] = {}
_SETTINGS: dict[str, Any] = {}


def configure(endpoint: str | None = None, region: str | None = None, path_style: bool = False) -> None:
    """The spec's `storage` block. What it sets wins over the environment: in a cluster the operator puts the same
    values into the pod's environment, and on a laptop the spec is the only place they are written."""
    _SETTINGS.update(endpoint=endpoint, region=region, path_style=path_style)
    _CLIENT.clear()


def client() -> Any:
    """One client per process (boto3 clients are thread-safe)."""
    if "s3" not in _CLIENT:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StorageError("s3:// needs boto3 (pip install 'kubetune[train]')") from None
        endpoint = (_SETTINGS.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        style = ("path" if _SETTINGS.get("path_style") else None) or os.environ.get("KUBETUNE_S3_ADDRESSING_STYLE") \
            or ("path" if endpoint else "auto")
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                        s3={"addressing_style": style}, max_pool_connections=16)
        session = boto3.session.Session(**_secret_credentials())
        _CLIENT["s3"] = session.client("s3", endpoint_url=endpoint, config=config,
                                       region_name=_SETTINGS.get("region") or os.environ.get("AWS_REGION")
                                       or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return _CLIENT["s3"]


def _secret_credentials() -> dict[str, str]:
    directory = os.environ.get("KUBETUNE_S3_SECRET_DIR")
    if not directory:
        return {}
    found = {}
    for field, names in (("aws_access_key_id", ("AWS_ACCESS_KEY_ID", "access-key-id", "accesskey")),
                         ("aws_secret_access_key", ("AWS_SECRET_ACCESS_KEY", "secret-access-key", "secretkey")),
                         ("aws_session_token", ("AWS_SESSION_TOKEN", "session-token"))):
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                found[field] = path.read_text().strip()
                break
    if "aws_access_key_id" not in found or "aws_secret_access_key" not in found:
        raise StorageError(f"KUBETUNE_S3_SECRET_DIR {directory}: needs files AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or access-key-id and secret-access-key)")
    return found


def transient(exc: BaseException) -> bool:
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError,
                                     ReadTimeoutError, ResponseStreamingError)

    if isinstance(exc, (ConnectionClosedError, EndpointConnectionError, ReadTimeoutError, ConnectTimeoutError,
                        ResponseStreamingError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                                         "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable")
    text = str(exc)  # s3transfer wraps the cause into a message-only exception
    return any(word in text for word in ("503", "500", "SlowDown", "Connection was closed", "reset by peer",
                                         "Read timeout", "Could not connect", "ServiceUnavailable", "InternalError"))


def explain(exc: BaseException, op: str, where: S3Uri) -> StorageError:
    """One line naming the bucket and the permission; botocore's text is kept only when it holds no credentials."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{where}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                            "KUBETUNE_S3_SECRET_DIR, or a service-account role)")
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    if code == "NoSuchBucket":
        return StorageError(f"{where}: bucket {where.bucket} does not exist")
    if code in DENIED or "AccessDenied" in str(exc) or "InvalidAccessKeyId" in str(exc) \
            or "SignatureDoesNotMatch" in str(exc):
        return StorageError(f"{where}: access denied ({code or 'AccessDenied'}): the credentials in use lack "
                            f"{PERMISSION[op]} on bucket {where.bucket}, or are not valid for this endpoint")
    return StorageUnavailable(f"{where}: {PERMISSION[op]} failed: {type(exc).__name__}: {_scrub(str(exc))[:300]}")


def _scrub(text: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(name)
        if value:
            text = text.replace(value, "***")
    # An endpoint written as https://KEY:SECRET@host carries credentials in every connection error botocore prints.
    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


def retry(op: str, where: S3Uri, fn: Callable[[], Any], log: Callable[[str], None] = lambda s: None) -> Any:
    """Run `fn`, retrying transient failures with exponential backoff and full jitter (0.2 s, 0.4 s, ... capped at
    20 s); anything else, or the last transient failure, becomes a StorageError."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            if not transient(exc) or attempt == ATTEMPTS:
                raise explain(exc, op, where) from None
            delay = random.uniform(0, min(20.0, 0.2 * 2 ** attempt))
            log(f"{where}: {PERMISSION[op]} failed ({type(exc).__name__}), retry {attempt}/{ATTEMPTS - 1} in "
                f"{delay:.1f}s")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    # Multipart above 64 MiB in 64 MiB parts, 8 parts at a time; a failed part is retried, not the whole file.
    return TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=8)


def put_file(path: Path, where: S3Uri, log: Callable[[str], None] = lambda s: None) -> None:
    retry("put", where, lambda: client().upload_file(str(path), where.bucket, where.key, Config=_transfer_config()), log)


def put_bytes(data: bytes, where: S3Uri, log: Callable[[str], None] = lambda s: None) -> None:
    retry("put", where, lambda: client().put_object(Bucket=where.bucket, Key=where.key, Body=data), log)


def get_bytes(where: S3Uri) -> bytes | None:
    from botocore.exceptions import ClientError

    def fetch() -> bytes | None:
        try:
            return client().get_object(Bucket=where.bucket, Key=where.key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    return retry("get", where, fetch)


def get_file(where: S3Uri, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    retry("get", where, lambda: client().download_file(where.bucket, where.key, str(tmp), Config=_transfer_config()))
    os.replace(tmp, path)


def list_objects(where: S3Uri) -> dict[str, int]:
    """Keys under the prefix (relative to it) → size."""
    prefix = where.key + "/" if where.key else ""

    def scan() -> dict[str, int]:
        found = {}
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix):]] = item["Size"]
        return found

    return retry("list", where, scan)


def delete(where: S3Uri, keys: Iterable[str]) -> None:
    keys = list(keys)
    for i in range(0, len(keys), 1000):
        batch = [{"Key": where.join(k).key} for k in keys[i:i + 1000]]
        retry("delete", where, lambda: client().delete_objects(Bucket=where.bucket, Delete={"Objects": batch}))


def parallel(jobs: list[Callable[[], None]], workers: int = 4) -> None:
    """Run a few transfers at once; the first failure is raised after the others finish."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
