"""``build_loader``: the trainer's entry point to the DALI triplet pipeline.

Every epoch builds a fresh DALI pipeline seeded from (seed, rank, epoch), so an epoch's batches
depend only on those three numbers (resuming at epoch 7 gives what a straight run gives). The
shard order is reshuffled each epoch with a seed shared by all ranks; DALI's reader then gives
rank r the r-th contiguous part of the samples and shuffles it through a buffer. Every rank
runs exactly ``len(loader)`` = ⌊⌊N / world_size⌋ / batch_size⌋ batches, so DDP ranks never wait
on each other at the end of an epoch. In ``read_mode: range`` the order is a global seeded
permutation cut into equal parts (see ``pipeline.range_source``).

Batches are dicts of torch tensors on the requested device (DALI's outputs are handed to torch
through DLPack without a copy, never through the host on a GPU): ``current_global``
[B,G,3,H,W], ``current_local`` [B,L,3,h,w], ``past`` and ``future`` [B,2,3,H,W] (``simple``
workload: G = 1, L = 0, 1 view),
``frame_idx`` [B,3] int64 (past, current, future), ``num_frames`` [B], ``label`` [B],
``key`` list[str], and ``raw`` [B,3,S,S,3] uint8 when ``raw_size`` > 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.config import PipelineConfig
from pipeline.dataset import Split, open_split
from pipeline.graph import make_pipeline, output_names
from pipeline.range_source import RangeSource, epoch_order

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_device(device: str) -> tuple[str, int | None, torch.device]:
    """"cuda"/"cuda:N" → ("gpu", N, cuda:N); "cpu" → ("cpu", None, cpu). The one device decision."""
    if device == "cpu":
        return "cpu", None, torch.device("cpu")
    if device.startswith("cuda"):
        dev = torch.device(device)
        index = dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return "gpu", index, torch.device("cuda", index)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def seed_for(*words: int) -> int:
    """A 31-bit seed from a tuple of integers (stable across runs and machines)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0] & 0x7FFFFFFF)


def _to_torch(tl, dtype: torch.dtype | None, device: torch.device, shared: bool) -> torch.Tensor:
    """A dense DALI TensorList as a torch tensor on ``device``, without a host round trip on GPU.

    ``shared``: the pipeline runs DALI's dynamic executor, whose outputs are freshly allocated
    and reference-counted, so torch can take them over through DLPack without a copy (what
    DALI's own PyTorch iterator does); otherwise the buffers are reused by later iterations and
    are copied out.
    """
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = tl.as_tensor()
    if shared:
        with device:
            out = torch.from_dlpack(tensor).to(device)  # CPU-side outputs of a GPU pipeline move over
    elif device.type == "cuda" and hasattr(tl, "as_cpu"):  # a GPU TensorList
        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
    else:
        out = torch.from_numpy(np.asarray(tensor).copy()).to(device)
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


class TripletLoader:
    """Epochs of triplet batches for one rank; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, split: Split, *, batch_size: int, device: str,
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.split, self.batch_size = cfg, split, batch_size
        self.rank, self.world_size = rank, world_size
        self.dali_device, self.device_id, self.device = parse_device(device)
        self.dtype = TORCH_DTYPES[cfg.dtype]
        self.names = output_names(cfg)
        self.batches = (len(split.samples) * cfg.repeat // world_size) // batch_size

    def __len__(self) -> int:
        return self.batches

    def pipeline(self, epoch: int):
        """The DALI pipeline of ``epoch`` for this rank (built, not yet run)."""
        cfg = self.cfg
        seed = seed_for(cfg.seed, self.rank, epoch)
        per_rank = self.batches * self.batch_size
        source, files, indexes = None, self.split.tars, self.split.indexes
        if cfg.read_mode == "range":
            order = epoch_order(len(self.split.samples), cfg.seed, epoch, self.rank, self.world_size, per_rank,
                                cfg.repeat)
            source = RangeSource(self.split.samples, order, (cfg.seed, self.rank, epoch),
                                 cfg.sampling, cfg.gap_min, cfg.gap_max)
        else:
            rng = np.random.default_rng(seed_for(cfg.seed, epoch, 0x5A4D))
            perm = np.concatenate([rng.permutation(len(files)) for _ in range(cfg.repeat)])
            files, indexes = [files[i] for i in perm], [indexes[i] for i in perm]
        fill = max(1, min(cfg.shuffle_buffer, len(self.split.samples) * cfg.repeat // self.world_size))
        return make_pipeline(cfg, self.dali_device, self.device_id, batch_size=self.batch_size,
                             files=files, index_files=indexes, shard_id=self.rank,
                             num_shards=self.world_size, seed=seed, initial_fill=fill, source=source)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """The batches of ``epoch`` from ``start_batch`` on (earlier ones are run and dropped)."""
        if not 0 <= start_batch <= self.batches:
            raise ValueError(f"start_batch must be in [0, {self.batches}], got {start_batch}")
        pipe = self.pipeline(epoch)
        try:
            for b in range(self.batches):
                outs = pipe.run()
                if b >= start_batch:
                    yield self._batch(outs, bool(pipe.exec_dynamic))
        finally:
            del pipe

    def _batch(self, outs, shared: bool) -> dict:
        raw = dict(zip(self.names, outs))
        batch = {}
        for name in ("current_global", "current_local", "past", "future"):
            if name in raw:
                batch[name] = _to_torch(raw[name], self.dtype, self.device, shared)
        if "current_local" not in batch:
            g = batch["current_global"]
            size = self.cfg.local_size
            batch["current_local"] = g.new_empty((g.shape[0], 0, 3, size, size))
        batch["frame_idx"] = _to_torch(raw["frame_idx"], torch.int64, self.device, shared)
        batch["num_frames"] = _to_torch(raw["num_frames"], torch.int64, self.device, shared)
        keys, labels = self._meta(raw["meta"])
        batch["label"] = torch.tensor(labels, dtype=torch.int64).to(self.device)
        batch["key"] = keys
        if "raw" in raw:
            batch["raw"] = _to_torch(raw["raw"], None, self.device, shared)
        return batch

    def _meta(self, tl) -> tuple[list[str], list[int]]:
        if self.cfg.read_mode == "range":
            refs = [self.split.samples[int(i)] for i in np.array(tl.as_tensor()).ravel()]
            return [r.key for r in refs], [r.label_id for r in refs]
        metas = [json.loads(bytes(np.array(tl[i]))) for i in range(len(tl))]
        return [m["key"] for m in metas], [int(m["label_id"]) for m in metas]


def build_loader(cfg: PipelineConfig, shards_dir: str | Path, *, batch_size: int, device: str,
                 rank: int = 0, world_size: int = 1) -> TripletLoader:
    """Check the split's shards and return this rank's loader; ValueError on bad input."""
    cfg.validate()
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
    split = open_split(shards_dir, cfg.split, verify_offsets=cfg.verify_offsets)
    if len(split.samples) * cfg.repeat < world_size * batch_size:
        raise ValueError(f"split '{cfg.split}' of {shards_dir} has {len(split.samples)} samples, fewer than "
                         f"world_size × batch_size = {world_size} × {batch_size}: no full batch per rank")
    return TripletLoader(cfg, split, batch_size=batch_size, device=device, rank=rank, world_size=world_size)
