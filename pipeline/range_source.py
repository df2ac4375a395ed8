"""``read_mode: range``: fetch only the three chosen JPEGs of a sample with ``pread``.

A ``RangeSource`` is the per-sample callback of DALI's parallel ``fn.external_source``: DALI
calls it in worker processes with the sample's position in the epoch. The epoch's order is a
seeded permutation of the whole split (a global shuffle, no buffer needed), cut into equal
contiguous parts, one per rank. For each sample it draws the frames with the same rule as the
graph (``pipeline.sampling.sample_triplet``, seeded per sample, so it does not matter which
worker runs it), reads the 3 start/end pairs of the offsets table (48 bytes) and the 3 JPEG byte
ranges, and returns them to the same decode and augmentation graph as the whole-sample mode.
The frame count comes from the index (the offsets member's size), so nothing else is read.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.dataset import SampleRef
from pipeline.sampling import sample_triplet


class RangeSource:
    """Per-sample callback: (jpeg past, jpeg current, jpeg future, frame_idx[3], num_frames, sample id)."""

    def __init__(self, samples: list[SampleRef], order: np.ndarray, seed_words: tuple[int, ...],
                 sampling: str, gap_min: int, gap_max: int):
        self.tars = sorted({s.tar for s in samples})
        tar_id = {t: i for i, t in enumerate(self.tars)}
        self.table = np.array([(tar_id[s.tar], s.mjpeg_offset, s.offsets_offset, s.num_frames) for s in samples],
                              dtype=np.int64).reshape(-1, 4)
        self.order = np.asarray(order, dtype=np.int64)
        self.seed_words = tuple(int(w) for w in seed_words)
        self.sampling, self.gap_min, self.gap_max = sampling, gap_min, gap_max
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def _fd(self, tar: int) -> int:
        fd = self._fds.get(tar)
        if fd is None:
            fd = self._fds[tar] = os.open(self.tars[tar], os.O_RDONLY)
        return fd

    def __len__(self) -> int:
        return len(self.order)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        """DALI's per-sample call; ``info.idx_in_epoch`` is the position in this rank's epoch."""
        if info.idx_in_epoch >= len(self.order):
            raise StopIteration
        return self.read(info.idx_in_epoch)

    def read(self, position: int) -> tuple[np.ndarray, ...]:
        """The sample at ``position`` of the epoch: its 3 JPEGs and what they are."""
        sid = int(self.order[position])
        tar, mjpeg_offset, offsets_offset, t = (int(v) for v in self.table[sid])
        rng = np.random.default_rng((*self.seed_words, position))
        frames = sample_triplet(t, rng, self.sampling, self.gap_min, self.gap_max)
        fd = self._fd(tar)
        out = []
        for i in frames:
            start, end = np.frombuffer(os.pread(fd, 16, offsets_offset + 8 * i), dtype="<i8")
            data = os.pread(fd, int(end - start), mjpeg_offset + int(start))
            if len(data) != end - start:
                raise ValueError(f"shard {self.tars[tar]}: short read of frame {i} (truncated tar?)")
            out.append(np.frombuffer(data, dtype=np.uint8))
        return (*out, np.array(frames, dtype=np.int64), np.array(t, dtype=np.int64), np.array(sid, dtype=np.int64))


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int, world_size: int, per_rank: int,
                repeat: int = 1) -> np.ndarray:
    """This rank's sample ids for an epoch: seeded permutations (``repeat`` passes) cut into equal parts."""
    rng = np.random.default_rng((seed, epoch, 0x5A4D))
    perm = np.concatenate([rng.permutation(num_samples) for _ in range(repeat)])
    return perm[rank * per_rank:(rank + 1) * per_rank]
