"""A prefix in an S3 bucket (AWS or any S3-compatible store via endpoint_url).

An archive is one multipart upload, streamed in parts of `part_size_mib`
with a bounded number of parts in flight (memory stays at about
part size x (in flight + 1)). The object appears only when the upload is
completed; any failure aborts the multipart upload, retrying the abort for a
while if the store is unreachable, and `cleanup_partial` aborts uploads an
earlier, interrupted run of ours left pending.
"""
from __future__ import annotations

import base64
import builtins
import dataclasses
import datetime
import hashlib
import logging
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO
from urllib.parse import ParseResult, urlparse

from reconciler.log import event
from reconciler.secret import Secret
from reconciler.targets.base import (
    ArchiveExists,
    ArchiveInfo,
    InlinePolicy,
    RequestRefused,
    Retained,
    StoredMismatch,
    Target,
    TargetConfig,
    TargetError,
    Upload,
    lazy_import,
    sort_key,
)

boto3 = lazy_import("boto3")
boto_errors = lazy_import("botocore.exceptions")  # ClientError, BotoCoreError, EndpointConnectionError

KIND = "s3"
BUCKET_AND_KEY = "^s3://[a-z0-9][a-z0-9.\\-]{1,61}[a-z0-9]/.+"
URL_SCHEME = "s3"
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {"const": "s3"},
        "path": {"$ref": "#/$defs/archive_path", "pattern": BUCKET_AND_KEY},
        "region": {"type": ["string", "null"], "default": None},
        "endpoint_url": {"description": "For S3-compatible stores (MinIO, Ceph, SeaweedFS ...). null: AWS.",
                         "type": ["string", "null"], "pattern": "^https?://", "default": None},
        "access_key": {"type": "string", "minLength": 1},
        "access_key_file": {"$ref": "#/$defs/path"},
        "secret_key": {"$ref": "#/$defs/secret"},
        "secret_key_file": {"$ref": "#/$defs/path"},
        "addressing_style": {"enum": ["auto", "path", "virtual"], "default": "auto"},
        "part_size_mib": {"type": "integer", "minimum": 5, "maximum": 5120, "default": 16,
                          "description": "Part size; memory is about 4 parts (3 uploading, 1 filling). Raised "
                                         "automatically so that an archive as large as the data fits in S3's "
                                         "10,000 parts."},
        "server_side_encryption": {"enum": [None, "AES256", "aws:kms"], "default": None},
        "sse_kms_key_id": {"type": ["string", "null"], "default": None},
        "storage_class": {"type": ["string", "null"], "default": None},
        "retention": {"$ref": "#/$defs/retention"},
        "object_lock": {
            "description": "S3 Object Lock: every archive, journal segment and base record is stored under "
                           "retention for retain_days (GOVERNANCE: only users granted s3:BypassGovernanceRetention "
                           "may delete it early; COMPLIANCE: nobody, not even the account's root). The bucket must "
                           "have been created with Object Lock enabled: validate and the daemon's start refuse "
                           "otherwise. Retention and journal pruning skip what is still locked and report it.",
            "type": ["object", "null"], "additionalProperties": False, "required": ["mode", "retain_days"],
            "properties": {"mode": {"enum": ["GOVERNANCE", "COMPLIANCE"]},
                           "retain_days": {"type": "integer", "minimum": 1, "maximum": 36500}},
            "default": None},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 60},
    },
}

# what a request (POST /backup/start, `replicator backup --type s3`) must give
REQUEST_SCHEMA = {"properties": {"path": {"pattern": BUCKET_AND_KEY}}}


def config_problems(target: dict, data_dir: Path) -> list[tuple[str | None, str]]:
    has_access = "access_key" in target or "access_key_file" in target
    has_secret = "secret_key" in target or "secret_key_file" in target
    if has_access != has_secret:
        return [(None, "give both access_key and secret_key, or neither (then the standard AWS credential "
                       "chain applies)")]
    return []


def options_from_request(body: dict, policy: InlinePolicy | None) -> dict:
    """The Go tool's fields: host is the region, username the access key,
    password the secret key. An endpoint_url only where the policy lists
    it (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL of this process apply)."""
    endpoint = body.get("endpoint_url")
    if endpoint and policy is not None and endpoint.rstrip("/") not in {u.rstrip("/") for u in policy.endpoint_urls}:
        raise RequestRefused(403, "endpoint_url is not one of api.inline_endpoint_urls", "endpoint_url")
    options: dict = {"region": body.get("host") or None}
    if body.get("username"):
        options["access_key"] = Secret(body["username"], origin="inline.username")
    if body.get("password"):
        options["secret_key"] = Secret(body["password"], origin="inline.password")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def target_for_url(url: ParseResult, configured: list[TargetConfig]) -> TargetConfig:
    """The configured target for the location's bucket (its credentials),
    else the standard AWS credential chain; the location as its path."""
    for t in configured:
        if urlparse(t.path).netloc == url.netloc:
            return dataclasses.replace(t, path=url.geturl())
    return TargetConfig(name="s3", kind="s3", path=url.geturl())


def build(cfg: TargetConfig) -> S3Target:
    return S3Target(cfg.name, cfg.path, **cfg.options)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
IN_FLIGHT = 3          # parts uploading while the next one fills (more did not help on SeaweedFS)
MAX_PARTS = 10_000     # S3's limit per upload
ABORT_RETRY_SECONDS = 60


class S3Upload(Upload):
    def __init__(self, target: S3Target, key: str):
        self.target, self.key = target, key
        extra: dict[str, object] = {}
        if target.sse:
            extra["ServerSideEncryption"] = target.sse
            if target.kms_key_id:
                extra["SSEKMSKeyId"] = target.kms_key_id
        if target.storage_class:
            extra["StorageClass"] = target.storage_class
        if target.lock is not None:
            mode, days = target.lock
            extra["ObjectLockMode"] = mode
            extra["ObjectLockRetainUntilDate"] = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                days=days)
        try:
            self.upload_id = target.client.create_multipart_upload(Bucket=target.bucket, Key=key,
                                                                   ChecksumAlgorithm="SHA256", **extra)["UploadId"]
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise target.error(f"cannot start uploading {key}", exc) from None
        self.buffer = bytearray()
        self.part_size = target.part_size
        self.number = 0
        self.parts: list[dict] = []
        self.pending: list[Future] = []
        self.pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="s3-part")
        self.done = False

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            chunk = bytes(self.buffer[: self.part_size])
            del self.buffer[: self.part_size]
            self._send(chunk)

    def _send(self, chunk: bytes) -> None:
        self.number += 1
        self.pending.append(self.pool.submit(self._upload_part, self.number, chunk))
        if len(self.pending) >= IN_FLIGHT:
            self._drain(block_until=IN_FLIGHT - 1)

    def _upload_part(self, number: int, chunk: bytes) -> dict:
        # the part's SHA-256 goes with it: the service refuses a part that does not match (BadDigest), keeps
        # it, and answers the object's composite checksum later (check_stored: nothing to download)
        digest = hashlib.sha256(chunk).digest()
        checksum = base64.b64encode(digest).decode()
        r = self.target.client.upload_part(Bucket=self.target.bucket, Key=self.key, UploadId=self.upload_id,
                                           PartNumber=number, Body=chunk, ChecksumAlgorithm="SHA256",
                                           ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": checksum,
                "_digest": digest, "_size": len(chunk)}

    def _drain(self, block_until: int = 0) -> None:
        while len(self.pending) > block_until:
            done, _ = wait(self.pending, return_when=FIRST_EXCEPTION)
            for future in done:
                self.pending.remove(future)
                try:
                    self.parts.append(future.result())
                except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
                    raise self.target.error(f"cannot upload part of {self.key}", exc) from None

    def commit(self) -> str:
        try:
            if self.buffer or self.number == 0:
                self._send(bytes(self.buffer))
                self.buffer.clear()
            self._drain()
            parts = sorted(self.parts, key=lambda p: p["PartNumber"])
            self.target.client.complete_multipart_upload(
                Bucket=self.target.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": [{k: v for k, v in p.items() if not k.startswith("_")} for p in parts]})
            composite = base64.b64encode(hashlib.sha256(b"".join(p["_digest"] for p in parts)).digest()).decode()
            self.target.committed[self.key] = (f"{composite}-{len(parts)}", sum(p["_size"] for p in parts))
        except TargetError:
            self.abort()
            raise
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            self.abort()
            raise self.target.error(f"cannot complete {self.key}", exc) from None
        finally:
            self.pool.shutdown(wait=False)
        self.done = True
        return self.target.location_of_key(self.key)

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.target.abort_upload(self.key, self.upload_id)


class S3Target(Target):
    kind = "s3"

    def __init__(self, name: str, path_template: str, region: str | None = None, endpoint_url: str | None = None,
                 access_key: Secret | None = None, secret_key: Secret | None = None,
                 addressing_style: str = "auto", part_size_mib: int = 16, server_side_encryption: str | None = None,
                 sse_kms_key_id: str | None = None, storage_class: str | None = None, timeout: float = 60,
                 object_lock: dict | None = None):
        super().__init__(name, path_template)
        if not path_template.startswith("s3://"):
            raise TargetError(f"target {name}: path must look like s3://bucket/key, got {path_template!r}")
        bucket, _, prefix = self.directory[len("s3://"):].partition("/")
        if not bucket:
            raise TargetError(f"target {name}: no bucket in {path_template!r}")
        self.bucket, self.prefix = bucket, (prefix + "/" if prefix else "")
        self.region, self.endpoint_url = region, endpoint_url
        self.part_size = max(5, part_size_mib) * MiB
        self.sse, self.kms_key_id, self.storage_class = server_side_encryption, sse_kms_key_id, storage_class
        self.lock = (object_lock["mode"], int(object_lock["retain_days"])) if object_lock else None
        self._lock_checked = False
        self.committed: dict[str, tuple[str, int]] = {}  # key -> (composite SHA-256 of its parts, size), this process's
        self.client = boto3.session.Session().client(
            "s3", region_name=region or None, endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key.reveal() if access_key else None,
            aws_secret_access_key=secret_key.reveal() if secret_key else None,
            config=lazy_import("botocore.config").Config(
                s3={"addressing_style": addressing_style}, connect_timeout=10, read_timeout=timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                # bounded memory is ours to keep: no extra pool threads buffering parts
                max_pool_connections=IN_FLIGHT + 2))

    def error(self, what: str, exc: BaseException) -> TargetError:
        if isinstance(exc, boto_errors.ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
            if err.get("Code") in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                detail += " (check the access key and secret key)"
            elif err.get("Code") in ("403", "AccessDenied"):  # a HEAD's answer has no body to say more
                detail += " (access refused: check the access key and secret key, and that they may use the bucket)"
        elif isinstance(exc, boto_errors.EndpointConnectionError):
            detail = f"cannot reach {self.endpoint_url or 'S3'}"
        else:
            detail = str(exc) or type(exc).__name__
        return TargetError(f"target {self.name} (s3://{self.bucket}/{self.prefix}): {what}: {detail}")

    def location_of_key(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def location(self, name: str) -> str:
        return self.location_of_key(self.prefix + name)

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except boto_errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self.error(f"cannot check {key}", exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self.error(f"cannot check {key}", exc) from None

    def _check_bucket(self) -> None:
        """A missing bucket is an error of its own, never created here (some
        S3 servers create one on the first write). Other refusals are left to
        the writes: a write-only policy may not allow HeadBucket."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                raise TargetError(f"target {self.name} (s3://{self.bucket}/{self.prefix}): bucket {self.bucket} "
                                  f"does not exist (create it first; this tool never does)") from None
        except boto_errors.BotoCoreError as exc:
            raise self.error(f"cannot reach bucket {self.bucket}", exc) from None

    def check_settings(self) -> None:
        """With object_lock: the bucket has Object Lock enabled (without it
        S3 would refuse every upload, or, on some stores, take them unlocked)."""
        if self.lock is None or self._lock_checked:
            return
        self._check_bucket()
        where = f"target {self.name} (s3://{self.bucket}/{self.prefix})"
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except boto_errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
                raise TargetError(f"{where}: object_lock is set, but bucket {self.bucket} has no Object Lock (it "
                                  f"can only be enabled when a bucket is created: create one with Object Lock, or "
                                  f"remove object_lock)") from None
            raise self.error("cannot read the bucket's Object Lock configuration", exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self.error("cannot read the bucket's Object Lock configuration", exc) from None
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise TargetError(f"{where}: object_lock is set, but bucket {self.bucket}'s Object Lock is not enabled")
        self._lock_checked = True

    def open(self, name: str, size_hint: int | None = None) -> Upload:
        key = self.prefix + name
        self._check_bucket()
        self.check_settings()
        if self._exists(key):
            raise ArchiveExists(f"target {self.name}: {self.location(name)} exists; it is never overwritten "
                                f"(put {{timestamp}} in the target's path)")
        upload = S3Upload(self, key)
        if size_hint:
            # stay under S3's 10,000 parts even if the archive is as large as the data
            upload.part_size = max(self.part_size, -(-size_hint // (MAX_PARTS - 100) // MiB) * MiB)
        return upload

    def abort_upload(self, key: str, upload_id: str, patience: float = ABORT_RETRY_SECONDS) -> bool:
        """Abort a multipart upload, retrying while the store is unreachable;
        True when it is gone. Never raises."""
        deadline, delay = time.monotonic() + patience, 0.5
        while True:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                event(log, "upload_aborted", target=self.name, key=key)
                return True
            except boto_errors.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return True
                last = self.error("abort", exc)
            except boto_errors.BotoCoreError as exc:
                last = self.error("abort", exc)
            if time.monotonic() >= deadline:
                event(log, "abort_failed", logging.ERROR, target=self.name, key=key, error=str(last),
                      note="the next backup to this target aborts it")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5)

    def check_stored(self, name: str, size: int, sha256: str) -> str:
        """The service's own SHA-256 checksums: every part was checked on
        arrival, and the object's composite checksum (the SHA-256 of the
        parts' SHA-256s) and size must be the ones of the parts this process
        sent. Read back and hashed when the service keeps no checksum."""
        key = self.prefix + name
        expected = self.committed.get(key)
        if expected is not None:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
                raise self.error(f"cannot check {key}", exc) from None
            stored = head.get("ChecksumSHA256")
            if head.get("ContentLength") != size or expected[1] != size:
                raise StoredMismatch(f"target {self.name}: {self.location(name)} holds {head.get('ContentLength')} "
                                     f"bytes, {size} were written")
            if stored is not None:
                if stored != expected[0]:
                    raise StoredMismatch(f"target {self.name}: {self.location(name)}: the service's SHA-256 "
                                         f"checksum {stored} is not the one of the parts sent ({expected[0]})")
                return f"the service's SHA-256 checksums of {expected[0].rsplit('-', 1)[1]} parts, {size} bytes"
        return super().check_stored(name, size, sha256)

    def read(self, name: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self.error(f"cannot read {self.prefix + name}", exc) from None

    def list(self) -> list[ArchiveInfo]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix):]
                    if "/" not in name and self.owns(name):
                        found.append(ArchiveInfo(name, obj["Size"], obj["LastModified"].timestamp(),
                                                 self.location_of_key(obj["Key"])))
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self.error("cannot list archives", exc) from None
        return sorted(found, key=sort_key)

    def folders(self) -> builtins.list[str]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix,
                                                                              Delimiter="/"):
                found += [p["Prefix"][len(self.prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self.error("cannot list folders", exc) from None
        return sorted(found)

    def delete(self, name: str) -> None:
        """Delete the object. With object_lock: its version, for real, once its
        retention has passed; raises Retained while it is locked."""
        key = self.prefix + name
        try:
            if self.lock is None:
                self.client.delete_object(Bucket=self.bucket, Key=key)
                return
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and until.timestamp() > time.time():
                raise Retained(f"target {self.name}: {self.location(name)} is kept by Object Lock "
                               f"({head.get('ObjectLockMode')}) until {until.isoformat()}", until.timestamp())
            version = head.get("VersionId")
            self.client.delete_object(Bucket=self.bucket, Key=key, **({"VersionId": version} if version else {}))
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self.error(f"cannot delete {key}", exc) from None

    def pending_uploads(self) -> builtins.list[tuple[str, str]]:
        """(key, upload id) of pending multipart uploads of our archive names."""
        out = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for up in page.get("Uploads", []):
                name = up["Key"][len(self.prefix):]
                if "/" not in name and self.owns(name):
                    out.append((up["Key"], up["UploadId"]))
        return out

    def cleanup_partial(self) -> builtins.list[str]:
        try:
            pending = self.pending_uploads()
        except (boto_errors.ClientError, boto_errors.BotoCoreError):
            return []
        return [key for key, upload_id in pending if self.abort_upload(key, upload_id, patience=5)]

    def close(self) -> None:
        self.client.close()
