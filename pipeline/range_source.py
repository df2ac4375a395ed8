"""``read_mode: range``: fetch only the three chosen JPEGs of each sample with ``pread``.

A ``RangeSource`` is the batch callback of DALI's parallel ``fn.external_source``: DALI calls
it in worker processes with the batch counter. The source never ends: the counter runs on across
epochs (``BatchClock`` says which epoch and batch it is), so one pipeline serves every epoch.
Each epoch's order is a seeded permutation of the whole split (a global shuffle, no buffer
needed), cut into equal contiguous parts, one per rank (``EpochOrder``). For a batch it draws
the frames with the rule of ``pipeline.sampling``, seeded by (seed, rank, epoch, batch) so that
it does not matter which worker runs it, and reads for each sample the part of its offsets table
between the past and the future frame (one read of a few hundred bytes) and the 3 JPEG byte
ranges. The frame count comes from the index (the
offsets member's size), so nothing else is read. Each worker keeps at most ``MAX_OPEN_FILES``
tars open (least recently used closed first). The view parameters come from
``pipeline.host.ParamSource`` in the main process: a dense array costs DALI ~5× more main-process
CPU through a parallel source than through a plain one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from nvidia.dali import types

from pipeline.clip_plan import CLIP_WORKLOADS, layout_of, plan_batch
from pipeline.config import PipelineConfig
from pipeline.dataset import SampleRef
from pipeline.params import FRAMES, BatchClock, batch_rng
from pipeline.sampling import triplets

MAX_OPEN_FILES = 64


@dataclass
class EpochOrder:
    """This rank's sample ids of an epoch: ``repeat`` seeded permutations cut into equal parts."""

    num_samples: int
    seed: int
    rank: int
    world_size: int
    per_rank: int
    repeat: int = 1
    _cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache.clear()  # one epoch at a time (a K400 permutation is 2 MB)
            self._cache[epoch] = epoch_order(self.num_samples, self.seed, epoch, self.rank, self.world_size,
                                             self.per_rank, self.repeat)
        return self._cache[epoch]


class RangeSource:
    """Batch callback: the JPEGs of N frame slots (tcore: past, current, future; a clip workload:
    its plan's ``frames``) and ``info`` [B, N + 2] int64 (the N frame indices, the frame count,
    the sample id)."""

    def __init__(self, cfg: PipelineConfig, samples: list[SampleRef], order: EpochOrder, clock: BatchClock,
                 batch_size: int, seed_words: tuple[int, int]):
        self.cfg, self.order, self.clock, self.batch_size = cfg, order, clock, batch_size
        self.seed_words = tuple(int(w) for w in seed_words)
        self.tars = sorted({s.tar for s in samples})
        tar_id = {t: i for i, t in enumerate(self.tars)}
        self.table = np.array([(tar_id[s.tar], s.mjpeg_offset, s.offsets_offset, s.num_frames) for s in samples],
                              dtype=np.int64).reshape(-1, 4)
        self.clips = cfg.workload in CLIP_WORKLOADS
        slots = layout_of(cfg).slots if self.clips else 3
        self.names = [f"jpeg{i}" for i in range(slots)] + ["info"]
        self.dtypes = [types.UINT8] * slots + [types.INT64]
        # clip workloads: what the plan needs per sample (frame count, height, width, frame rate)
        self.stats = clip_stats(samples) if self.clips else None
        self.prefetch = max(2, cfg.range_workers)  # batches made ahead: one per worker
        self.max_open = MAX_OPEN_FILES
        self._fds: OrderedDict[int, int] = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()
        return state

    def _fd(self, tar: int) -> int:
        fd = self._fds.get(tar)
        if fd is not None:
            self._fds.move_to_end(tar)
            return fd
        if len(self._fds) >= self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        fd = self._fds[tar] = os.open(self.tars[tar], os.O_RDONLY)
        return fd

    def open_files(self) -> int:
        return len(self._fds)

    def __call__(self, info) -> tuple:
        """DALI's batch call: ``info.iteration`` counts batches since the pipeline was built."""
        return self.read(*self.clock.at(info.iteration))

    def read(self, epoch: int, batch: int) -> tuple:
        """Batch ``batch`` of ``epoch``: its JPEGs and what they are."""
        b = self.batch_size
        ids = self.order(epoch)[batch * b:(batch + 1) * b]
        rows = self.table[ids]
        if self.clips:
            st = self.stats[ids]
            frames = plan_batch(self.cfg, self.seed_words, epoch, batch, st[:, 0], st[:, 1], st[:, 2], st[:, 3])["frames"]
        else:
            u = batch_rng(self.seed_words, epoch, batch, FRAMES).random((b, 3))
            frames = triplets(rows[:, 3], u, self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
        jpegs: list[list[np.ndarray]] = [[] for _ in range(frames.shape[1])]
        for (tar, mjpeg_offset, offsets_offset, _), fr in zip(rows.tolist(), frames.tolist()):
            fd = self._fd(tar)
            first = min(fr)  # one read of the offsets between the first and the last frame used
            span = np.frombuffer(os.pread(fd, 8 * (max(fr) - first + 2), offsets_offset + 8 * first), dtype="<i8")
            read: dict[int, np.ndarray] = {}  # a frame in several slots is read once
            for k, i in enumerate(fr):
                if i not in read:
                    start, end = int(span[i - first]), int(span[i - first + 1])
                    data = os.pread(fd, end - start, mjpeg_offset + start)
                    if len(data) != end - start:
                        raise ValueError(f"shard {self.tars[tar]}: short read of frame {i} (truncated tar?)")
                    read[i] = np.frombuffer(data, dtype=np.uint8)
                jpegs[k].append(read[i])
        return (*jpegs, np.concatenate([frames, rows[:, 3:4], ids[:, None]], axis=1).astype(np.int64))


def clip_stats(samples: list[SampleRef]) -> np.ndarray:
    """``[N, 4]`` float64 per sample: frame count, height, width, frame rate (what a clip plan reads)."""
    return np.array([(s.num_frames, s.height, s.width, s.fps) for s in samples], dtype=np.float64).reshape(-1, 4)


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int, world_size: int, per_rank: int,
                repeat: int = 1) -> np.ndarray:
    """This rank's sample ids for an epoch: seeded permutations (``repeat`` passes) cut into equal parts."""
    rng = np.random.default_rng((seed, epoch, 0x5A4D))
    perm = np.concatenate([rng.permutation(num_samples) for _ in range(repeat)])
    return perm[rank * per_rank:(rank + 1) * per_rank]
