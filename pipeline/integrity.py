"""Range mode's frame checks: a bad sample is found where its bytes are read and replaced.

For each sample of a batch the range reader fetches the part of the offsets table between the
past and the future frame and, in format v2, the same frames' CRC-32s, with one ``pread`` (the
``.crc`` member follows ``.offsets``), then the 3 JPEGs; each JPEG's CRC-32 is checked against
the table. With ``pipeline.frame_check``:

- ``auto`` (default): the CRC-32 on a v2 set; on a v1 set (no checksums) each fetched frame is
  decoded on the reader side (libjpeg-turbo, warnings count as errors), which costs a CPU decode;
- ``decode``: both, on any set;
- ``none``: neither (the baseline ``make profile`` compares against).

A sample is bad when it was listed as damaged when the split was opened (``Split.damaged``), its
bytes cannot be read (short read: a truncated tar), its offsets are inconsistent, its checksum
table is missing (v2), or a fetched frame fails its check. A bad sample is replaced by the next
sample of a permutation of the rank's part of the epoch seeded by (seed, rank, epoch, batch,
slot) (each tried once at most), with frames drawn by the same rule from the same uniforms: the same seed
gives the same replacement, the batch stays full, and every other sample of the batch, and every
view parameter, is what a run on an undamaged copy gets. The bad ones are reported per slot as
rows (sample id, frame or -1 for the whole sample, reason code: an index into
``shards.integrity.REASONS``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np

from pipeline.sampling import triplets
from shards.integrity import (
    CHECKSUM,
    CRC_TABLE,
    DECODE,
    OFFSETS,
    REASONS,
    TRUNCATED,
    crc32,
    decode_error,
)

REPLACE = 3  # purpose word of the replacement generator (pipeline.params uses 0..2)
MAX_TRIES = 64  # replacements tried for one slot before the batch fails
CODES = {reason: code for code, reason in enumerate(REASONS)}
FRAME_CHECKS = ("auto", "decode", "none")
# columns of the reader's sample table
TAR, MJPEG, OFFSETS_AT, FRAMES, MJPEG_SIZE, CRC_AT, KNOWN = range(7)

Problem = tuple[int, int]  # (frame or -1, reason code)


class ReaderError(ValueError):
    """Bad data the range reader could not replace (a clip workload's bad sample, a run of bad
    replacements): its message names the shard, the sample and the reason, in one line."""


def sample_table(samples: list, tars: list[str], damaged: dict[int, tuple[str, str]]) -> np.ndarray:
    """[N, 7] int64: tar id, mjpeg offset, offsets offset, frames, mjpeg size, crc offset (-1: none),
    reason code of damage found at open (-1: none)."""
    tar_id = {t: i for i, t in enumerate(tars)}
    rows = [(tar_id[s.tar], s.mjpeg_offset, s.offsets_offset, s.num_frames, s.mjpeg_size, s.crc_offset,
             CODES[damaged[i][0]] if i in damaged else -1) for i, s in enumerate(samples)]
    return np.array(rows, dtype=np.int64).reshape(-1, 7)


def fetch(fd: int, row: list[int], frames: list[int], crc: bool, decode: bool) -> tuple[list[bytes], Problem | None]:
    """The JPEGs of ``frames`` (any order; a repeated frame is read once) of the sample ``row`` (a
    table row), checked; on a problem, no JPEGs and (frame or -1, reason code). Small tables are
    unpacked with ``struct``: numpy's per-call cost is larger than the work here."""
    first, last = min(frames), max(frames)
    at = row[OFFSETS_AT] + 8 * first
    end = row[CRC_AT] + 4 * (last + 1) if crc else row[OFFSETS_AT] + 8 * (last + 2)
    span = os.pread(fd, end - at, at)
    if len(span) != end - at:
        return [], (-1, CODES[TRUNCATED])
    off = struct.unpack_from(f"<{last - first + 2}q", span)
    crcs = struct.unpack_from(f"<{last - first + 1}I", span, row[CRC_AT] + 4 * first - at) if crc else ()
    got: dict[int, bytes] = {}
    for i in frames:
        if i in got:
            continue
        start, stop = off[i - first], off[i - first + 1]
        if not 0 <= start < stop <= row[MJPEG_SIZE]:
            return [], (-1, CODES[OFFSETS])
        data = os.pread(fd, stop - start, row[MJPEG] + start)
        if len(data) != stop - start:
            return [], (i, CODES[TRUNCATED])
        if crc and crc32(data) != crcs[i - first]:
            return [], (i, CODES[CHECKSUM])
        if decode and decode_error(data) is not None:
            return [], (i, CODES[DECODE])
        got[i] = data
    return [got[i] for i in frames], None


class SampleChecker:
    """Fetches one slot's sample, checked, replacing bad samples (see the module docstring)."""

    def __init__(self, table: np.ndarray, frame_check: str, v2: bool, seed_words: tuple[int, int],
                 sampling: tuple[str, int, int]):
        if frame_check not in FRAME_CHECKS:
            raise ValueError(f"pipeline.frame_check must be one of {FRAME_CHECKS}, got {frame_check!r}")
        self.table, self.v2, self.seed_words, self.sampling = table, v2, seed_words, sampling
        self.crc = v2 and frame_check != "none"
        self.decode = frame_check == "decode" or (frame_check == "auto" and not v2)

    def one(self, fd_of: Callable[[int], int], sid: int, frames: list[int],
            decode: bool) -> tuple[list[bytes], Problem | None]:
        """The JPEGs of ``frames`` of sample ``sid``, checked; or no JPEGs and the problem."""
        row = self.table[sid].tolist()
        if row[KNOWN] >= 0:
            return [], (-1, row[KNOWN])
        if self.crc and row[CRC_AT] < 0:
            return [], (-1, CODES[CRC_TABLE])
        return fetch(fd_of(row[TAR]), row, frames, self.crc, self.decode or decode)

    def fill(self, fd_of: Callable[[int], int], sid: int, frames: list[int], u: np.ndarray, part: np.ndarray,
             where: tuple[int, int, int], decode: bool = False) -> tuple[int, list[int], list[bytes], list]:
        """Slot ``where`` = (epoch, batch, slot) drew sample ``sid`` at ``frames`` from uniforms ``u`` [3]:
        returns the sample used, its frames, their JPEGs, and (sample, frame, reason) of each bad
        sample met on the way (empty when ``sid`` was good). ``decode``: decode the frames here too."""
        bad: list[tuple[int, int, int]] = []
        candidates = None
        for _ in range(MAX_TRIES + 1):
            jpegs, problem = self.one(fd_of, sid, frames, decode)
            if problem is None:
                return sid, frames, jpegs, bad
            bad.append((sid, *problem))
            if candidates is None:  # the part in a seeded order, each sample tried once at most
                rng = np.random.default_rng((*self.seed_words, *where[:2], REPLACE, where[2]))
                candidates = iter(rng.permutation(part).tolist())
            tried = {b[0] for b in bad}
            sid = next((c for c in candidates if c not in tried), -1)
            if sid < 0:
                break
            frames = triplets(self.table[sid:sid + 1, FRAMES], u[None], *self.sampling)[0].tolist()
        raise ReaderError(f"epoch {where[0]}, batch {where[1]}: {len(bad)} samples in a row were bad, "
                         "replacements included (run `python -m shards.inspect SHARDS --verify`)")


def bad_records(tl, split) -> list[dict]:
    """The ``bad`` output of a batch (a DALI TensorList, [k, 3] per sample) as one dict per bad
    sample: shard (file name), key, frame (None: the whole sample), reason; most batches have none."""
    out = []
    for i, shape in enumerate(tl.shape()):
        if shape[0] == 0:
            continue
        for sid, frame, code in np.asarray(tl[i]).tolist():
            s = split.samples[sid]
            out.append({"shard": os.path.basename(s.tar), "key": s.key, "frame": None if frame < 0 else frame,
                        "reason": REASONS[code]})
    return out


def refuse_failed_set(shards_dir) -> None:
    """Whole mode checks no frame: ValueError if ``inspect --verify`` found problems in the set
    (its report, ``verify.parquet``, is in the shard directory)."""
    report = os.path.join(str(shards_dir), "verify.parquet")
    if "://" not in str(shards_dir) and os.path.isfile(report):
        import pyarrow.parquet as pq

        rows = pq.read_metadata(report).num_rows
        raise ValueError(f"shards {shards_dir}: `inspect --verify` found {rows} problems ({report}); "
                         "pipeline.read_mode=whole cannot leave bad samples out: use pipeline.read_mode=range "
                         "(checks every frame it reads and replaces bad samples) or re-shard the damaged shards")
