"""Where a job's output goes: a local directory, or any fsspec URL (``file://``, ``s3://``, ``gs://``, ...).

Every file is first written under a local directory (:attr:`Output.local_dir`): OUT itself for a
local path, a staging directory for a URL. :meth:`Output.publish` then uploads staged files in
the order given and removes the staged copies, so a shard's data (tar, index) reaches the remote
before its ``.stats.json`` marker and a shard whose marker exists remotely is complete. Workers
publish their own shards (on a cluster they may run on other hosts), so an :class:`Output` is
small and picklable: the file system object is rebuilt from the URL in each process.

This module is the only one that touches fsspec.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

UPLOAD_ATTEMPTS = 3  # tries of one upload before the job stops
UPLOAD_BACKOFF_S = 0.5  # wait before the second try; doubled before each further one
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "sftp": "paramiko", "ssh": "paramiko", "hf": "huggingface_hub"}
_PROCESS_LOCAL = {"memory"}  # file systems private to one process: workers would write elsewhere


class UploadError(RuntimeError):
    """An upload that failed on every try."""


def protocol(url: str) -> str | None:
    """The scheme of ``url`` (``s3`` for ``s3://b/k``), or None for a plain local path."""
    head, sep, _ = url.partition("://")
    if not sep or not head or not (head[0].isalpha() and all(c.isalnum() or c in "+.-" for c in head)):
        return None
    return head.lower()


def check_url(name: str, url: str) -> None:
    """ValueError (one line, naming the option) if ``url`` names a file system that cannot be used here."""
    proto = protocol(url)
    if proto is None:
        return
    if proto in _PROCESS_LOCAL:
        raise ValueError(f"{name} {url}: the {proto}:// file system lives inside one process, so worker "
                         "processes cannot share it; give a local path or a shared store (file://, s3://, gs://)")
    import fsspec

    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise ValueError(f"{name} {url}: unknown file system '{proto}://' (fsspec knows no such protocol)") from None
    except ImportError as exc:
        package = _PACKAGES.get(proto)
        hint = f"pip install {package}" if package else str(exc).splitlines()[0]
        raise ValueError(f"{name} {url}: the {proto}:// file system needs a package that is not installed "
                         f"({hint})") from None


@dataclass(frozen=True)
class Output:
    """The output tree of a job: ``url`` is OUT (local path or URL); for a URL, files are staged in
    ``shards-stage-<hash of url>`` inside ``stage`` ("" : the system temp dir of the host that writes)."""

    url: str
    stage: str = ""

    @staticmethod
    def open(url: str, stage: str = "") -> Output:
        """An Output whose local paths are absolute (workers need not share the caller's directory)."""
        if protocol(url) is None:
            return Output(os.path.abspath(url))
        return Output(url.rstrip("/"), os.path.abspath(stage) if stage else "")

    @property
    def remote(self) -> bool:
        """True when files are staged locally and uploaded to ``url``."""
        return protocol(self.url) is not None

    @property
    def local_dir(self) -> Path:
        """Where files are written first: OUT itself, or the staging directory of a URL."""
        if not self.remote:
            return Path(self.url)
        digest = hashlib.sha1(self.url.encode()).hexdigest()[:12]
        return Path(self.stage or tempfile.gettempdir()) / f"shards-stage-{digest}"

    def display(self, rel: str = "") -> str:
        """The user-facing name of ``rel`` inside OUT."""
        return f"{self.url.rstrip('/')}/{rel}" if rel else self.url

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(self.url)

    def _local_fs(self, fs: Any) -> bool:
        return "file" in ([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol)

    # ------------------------------------------------------------ reading OUT

    def read_bytes(self, rel: str) -> bytes | None:
        """The bytes of ``rel``, or None if there is no such file."""
        if not self.remote:
            path = Path(self.url) / rel
            return path.read_bytes() if path.is_file() else None
        fs, root = self._fs()
        try:
            return fs.cat_file(f"{root}/{rel}")
        except FileNotFoundError:
            return None

    def open_read(self, rel: str) -> IO[bytes]:
        """A binary file object reading ``rel`` (streamed from a remote)."""
        if not self.remote:
            return open(Path(self.url) / rel, "rb")
        fs, root = self._fs()
        return fs.open(f"{root}/{rel}", "rb", block_size=8 * 2**20)

    def sizes(self, folder: str) -> dict[str, int]:
        """File name -> size of every file directly in ``folder`` of OUT (one listing; {} if absent)."""
        if not self.remote:
            path = Path(self.url) / folder
            if not path.is_dir():
                return {}
            return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
        fs, root = self._fs()
        fs.invalidate_cache()  # another process may have written since this process last looked
        try:
            entries = fs.ls(f"{root}/{folder}", detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"]) for e in entries if e["type"] == "file"}

    # ------------------------------------------------------------ writing OUT

    def publish(self, rels: list[str]) -> None:
        """Upload staged files in this order and remove each staged copy (nothing to do for a local OUT)."""
        if not self.remote:
            return
        fs, root = self._fs()
        for rel in rels:
            local = self.local_dir / rel
            self._upload(fs, local, f"{root}/{rel}")
            local.unlink()

    def _upload(self, fs: Any, local: Path, remote: str) -> None:
        """One upload with bounded retries; a local file system gets a temporary name and a rename,
        object stores make an object visible only once it is whole."""
        reason = ""
        for attempt in range(UPLOAD_ATTEMPTS):
            if attempt:
                time.sleep(UPLOAD_BACKOFF_S * 2 ** (attempt - 1))
            try:
                if self._local_fs(fs):
                    fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
                    fs.put_file(str(local), remote + ".tmp")
                    fs.mv(remote + ".tmp", remote)
                else:
                    fs.put_file(str(local), remote)
                return
            except Exception as exc:  # noqa: BLE001 - any failure of the store is retried, then reported
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"
        rel = local.relative_to(self.local_dir).as_posix()
        raise UploadError(f"upload of {rel} to {self.display(rel)} failed {UPLOAD_ATTEMPTS} times ({reason}); "
                          "fix the store or its credentials and re-run the same command to resume")

    def clear_stage(self) -> None:
        """Remove this host's staging directory of a URL (leftovers of an interrupted run, or an
        emptied stage once a job is done); never touches a local OUT."""
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)
