"""``read_mode: range``: fetch only the three chosen JPEGs of each sample with ``pread``.

A ``RangeSource`` is the batch callback of DALI's parallel ``fn.external_source``: DALI calls
it in worker processes with the batch counter. The source never ends: the counter runs on across
epochs (``BatchClock`` says which epoch and batch it is), so one pipeline serves every epoch.
Each epoch's order is a seeded permutation of the whole split (a global shuffle, no buffer
needed), cut into equal contiguous parts, one per rank (``EpochOrder``). For a batch it draws
the frames with the rule of ``pipeline.sampling``, seeded by (seed, rank, epoch, batch) so that
it does not matter which worker runs it, and reads for each sample the part of its offsets table
between the past and the future frame, with (format v2) the same frames' CRC-32s (one read of
about a kilobyte: the ``.crc`` member follows ``.offsets``), and the 3 JPEG byte ranges. The frame count comes from the index (the
offsets member's size), so nothing else is read. Each worker keeps at most ``MAX_OPEN_FILES``
tars open (least recently used closed first). The view parameters come from
``pipeline.host.ParamSource`` in the main process: a dense array costs DALI ~5× more main-process
CPU through a parallel source than through a plain one. Every fetched frame is checked, and a
bad sample replaced, by ``pipeline.integrity.SampleChecker``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from nvidia.dali import types

from pipeline.clip_plan import CLIP_WORKLOADS, layout_of, plan_batch
from pipeline.config import PipelineConfig
from pipeline.dataset import Split
from pipeline.integrity import ReaderError, SampleChecker, sample_table
from pipeline.params import FRAMES, BatchClock, batch_rng
from pipeline.sampling import triplets
from shards.integrity import REASONS

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
    """Batch callback: the JPEGs of N frame slots (tcore and simple: past, current, future; a clip
    workload: its plan's ``frames``), ``info`` [B, N + 2] int64 (the N frame indices, the frame
    count, the sample id) and, for the triplet workloads, ``bad`` [B][k,3] int64 (the bad samples
    this slot replaced: sample id, frame or -1, reason code; k = 0 almost always). A clip
    workload's frames are checked the same way, but a bad sample stops the batch with one line
    naming it (its plan, drawn for the batch in the main process too, cannot be redrawn for a
    replacement here)."""

    def __init__(self, cfg: PipelineConfig, split: Split, order: EpochOrder, clock: BatchClock,
                 batch_size: int, seed_words: tuple[int, int], v2: bool,
                 decode_batch: tuple[int, int] | None = None):
        self.cfg, self.order, self.clock, self.batch_size = cfg, order, clock, batch_size
        self.seed_words = tuple(int(w) for w in seed_words)
        self.tars = sorted({s.tar for s in split.samples})
        self.table = sample_table(split.samples, self.tars, split.damaged)
        self.decode_batch = decode_batch  # (epoch, batch) whose frames are also decoded here
        self.checker = SampleChecker(self.table, cfg.frame_check, v2, self.seed_words,
                                     (cfg.sampling, cfg.gap_min, cfg.gap_max))
        self.clips = cfg.workload in CLIP_WORKLOADS
        slots = layout_of(cfg).slots if self.clips else 3
        self.names = [f"jpeg{i}" for i in range(slots)] + ["info"] + ([] if self.clips else ["bad"])
        self.dtypes = [types.UINT8] * slots + [types.INT64] * (len(self.names) - slots)
        # clip workloads: what the plan needs per sample (frame count, height, width, frame rate), and
        # the keys that name a bad sample
        self.stats = clip_stats(split.samples) if self.clips else None
        self.keys = [s.key for s in split.samples] if self.clips else None
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
        part = self.order(epoch)
        ids = part[batch * b:(batch + 1) * b].copy()
        if self.clips:
            return self._read_clips(epoch, batch, ids)
        u = batch_rng(self.seed_words, epoch, batch, FRAMES).random((b, 3))
        frames = triplets(self.table[ids, 3], u, self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
        jpegs: list[list[np.ndarray]] = [[], [], []]
        bad = []
        for slot, (sid, fr) in enumerate(zip(ids.tolist(), frames.tolist())):
            sid, fr, got, met = self.checker.fill(self._fd, sid, fr, u[slot], part, (epoch, batch, slot),
                                                  decode=(epoch, batch) == self.decode_batch)
            ids[slot], frames[slot] = sid, fr
            for k in range(3):
                jpegs[k].append(np.frombuffer(got[k], dtype=np.uint8))
            bad.append(np.array(met, dtype=np.int64).reshape(-1, 3))
        info = np.concatenate([frames, self.table[ids, 3:4], ids[:, None]], axis=1).astype(np.int64)
        return (*jpegs, info, bad)

    def _read_clips(self, epoch: int, batch: int, ids: np.ndarray) -> tuple:
        """A clip workload's batch: the plan's frames of each sample, checked (a bad one raises)."""
        st = self.stats[ids]
        frames = plan_batch(self.cfg, self.seed_words, epoch, batch, st[:, 0], st[:, 1], st[:, 2], st[:, 3])["frames"]
        jpegs: list[list[np.ndarray]] = [[] for _ in range(frames.shape[1])]
        for sid, fr in zip(ids.tolist(), frames.tolist()):
            got, problem = self.checker.one(self._fd, sid, fr, decode=False)
            if problem is not None:
                frame, code = problem
                raise ReaderError(f"shard {self.tars[int(self.table[sid, 0])]}: sample {self.keys[sid]}"
                                 f"{'' if frame < 0 else f' frame {frame}'}: {REASONS[code]} "
                                 "(run `python -m shards.inspect SHARDS --verify`)")
            for k, data in enumerate(got):
                jpegs[k].append(np.frombuffer(data, dtype=np.uint8))
        return (*jpegs, np.concatenate([frames, self.table[ids, 3:4], ids[:, None]], axis=1).astype(np.int64))


def clip_stats(samples: list) -> np.ndarray:
    """``[N, 4]`` float64 per sample: frame count, height, width, frame rate (what a clip plan reads)."""
    return np.array([(s.num_frames, s.height, s.width, s.fps) for s in samples], dtype=np.float64).reshape(-1, 4)


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int, world_size: int, per_rank: int,
                repeat: int = 1) -> np.ndarray:
    """This rank's sample ids for an epoch: seeded permutations (``repeat`` passes) cut into equal parts."""
    rng = np.random.default_rng((seed, epoch, 0x5A4D))
    perm = np.concatenate([rng.permutation(num_samples) for _ in range(repeat)])
    return perm[rank * per_rank:(rank + 1) * per_rank]
