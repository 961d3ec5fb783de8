"""Where a prepared folder's files are: a local folder, or object storage read in place."""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path


def is_url(location: str) -> bool:
    """Whether ``location`` names object storage (``s3://...``) rather than a local path."""
    return "://" in str(location)


class PreparedFiles:
    """The files of a prepared folder, read in place: a local folder, an ``s3://`` URL (through
    LitData's S3 client: the credentials and endpoint it streams the shards with, from the
    environment, ``~/.aws`` or a Lightning data connection; made once, as making one takes a
    good part of a second), or another scheme LitData reads (``gs://``, ...), fetched whole by
    its downloader."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/") if is_url(location) else location
        self._client = None

    def _s3(self, name: str) -> tuple:
        """(client, bucket, key) of ``name`` on S3."""
        if self._client is None:
            from litdata.streaming.client import S3Client

            self._client = S3Client().client
        bucket, _, prefix = self.location.removeprefix("s3://").partition("/")
        return self._client, bucket, f"{prefix}/{name}".lstrip("/")

    def open(self, name: str):
        """A binary stream of ``name``."""
        if not is_url(self.location):
            return (Path(self.location) / name).open("rb")
        if self.location.startswith("s3://"):
            client, bucket, key = self._s3(name)
            return client.get_object(Bucket=bucket, Key=key)["Body"]
        from litdata.streaming.downloader import get_downloader

        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp) / Path(name).name)
            get_downloader(self.location, tmp, []).download_file(f"{self.location}/{name}", local)
            return io.BytesIO(Path(local).read_bytes())

    def read(self, name: str) -> bytes:
        with self.open(name) as stream:
            return stream.read()

    def sha256(self, name: str) -> str:
        """The sha256 of ``name``, read in blocks: a 64 MB shard is never held whole."""
        digest = hashlib.sha256()
        with self.open(name) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def download(self, name: str, dest: Path) -> None:
        """An ``s3://`` folder's ``name`` as the local file ``dest``, whole or not at all: boto3's
        managed transfer (ranged GETs in parallel, retried) writes a temporary file beside it and
        renames it at the end."""
        client, bucket, key = self._s3(name)
        client.download_file(bucket, key, str(dest))

    def is_empty(self) -> bool:
        """Whether nothing is stored under the folder yet (an ``s3://`` prefix: one LIST request)."""
        if not is_url(self.location):
            folder = Path(self.location)
            return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
        client, bucket, prefix = self._s3("")
        return not client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount")

    def upload(self, path: Path, name: str) -> None:
        """The local file ``path`` stored as ``name`` (an ``s3://`` folder: multipart where large)."""
        client, bucket, key = self._s3(name)
        client.upload_file(str(path), bucket, key)

    def version(self, name: str) -> list | None:
        """What changes when ``name`` changes, without reading it: a local file's size and
        modification time, an S3 object's size and ETag (one HEAD request); None where unknown."""
        if not is_url(self.location):
            stat = (Path(self.location) / name).stat()
            return [stat.st_size, stat.st_mtime_ns]
        if self.location.startswith("s3://"):
            client, bucket, key = self._s3(name)
            head = client.head_object(Bucket=bucket, Key=key)
            return [head["ContentLength"], head["ETag"]]
        return None


def fetch_errors() -> tuple[type[BaseException], ...]:
    """What reading, writing or moving a local file or an object can raise for reasons outside
    the suite: a missing or unreadable file, a full disk, a bucket or key that is not there,
    credentials refused, a transfer that failed after its retries."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return OSError, BotoCoreError, ClientError, Boto3Error


def first_line(err: BaseException) -> str:
    """An error's message as one line: object stores' clients explain over many."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
