"""``build_loader``: the trainer's entry point to the DALI triplet pipeline.

An epoch's batches depend only on (seed, rank, epoch): every random draw of the graph comes from
numpy generators seeded by (seed, rank, epoch, batch or chunk index) (``pipeline.host``), and the
sample order from seeds shared by all ranks. Every rank runs exactly ``len(loader)`` =
⌊⌊N·repeat / world_size⌋ / batch_size⌋ batches, so DDP ranks never wait on each other at the end
of an epoch.

- ``read_mode: range``: one pipeline serves all epochs. The order is a global seeded
  permutation cut into equal parts (``pipeline.range_source``); the pipeline made for (epoch e,
  batch b) runs on into the following epochs, so consecutive ``iter_epoch`` calls never wait for
  a new pipeline, and a resume at batch b starts there without making the earlier batches.
- ``read_mode: whole``: DALI's webdataset reader reads the epoch's shard order (reshuffled each
  epoch with a seed shared by all ranks; rank r gets the r-th contiguous part and shuffles it
  through a buffer), so each epoch has its own pipeline. The next epoch's is built, and its first
  batch made, in a background thread while the current epoch runs; a resume at batch b makes and
  drops the b earlier batches.

Batches are dicts of torch tensors. Image tensors are on the requested device: on a GPU, DALI's
outputs are produced on torch's current CUDA stream (``Pipeline.run(cuda_stream=...)``) and
taken over through DLPack, which also orders their release after torch's work on that stream,
so DALI never reuses a buffer torch may still read. ``current_global`` [B,G,3,H,W],
``current_local`` [B,L,3,h,w], ``past`` and ``future`` [B,2,3,H,W] (``simple`` workload: G = 1,
L = 0, 1 view), ``raw`` [B,3,S,S,3] uint8 when ``raw_size`` > 0. Bookkeeping stays on the CPU
(the training step does not need it; copying it to the GPU would wait for the step before):
``frame_idx`` [B,3] int64 (past, current, future), ``num_frames`` [B] int64, ``label`` [B] int64,
``key`` list[str], and ``bad``: the bad samples that were replaced in this batch (range mode:
one dict per sample with ``shard``, ``key``, ``frame`` (None: the whole sample) and ``reason``;
see ``pipeline.integrity``). Whole mode does not check frames: it refuses a set that failed
``inspect --verify`` (its ``verify.parquet`` is there). ``device="host"`` runs only the graph's host side on the CPU (for profiling);
its batches hold the bookkeeping and ``host``, the raw DALI outputs.

Clip workloads (``dualvar``, ``cstp``, ``localglobal``): the clips and labels of the batch
contract in ``pipeline/clips.py`` (clips on the device, labels on the CPU), and ``frame_idx``
[B, N] the stored frame of each of the N decoded JPEG slots (``pipeline.clip_plan``), ``decoded``
[B] = N.
"""

from __future__ import annotations

import atexit
import json
import re
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.clip_plan import CLIP_WORKLOADS, layout_of
from pipeline.clip_views import ClipParamSource, WholeClipPlan
from pipeline.config import PipelineConfig
from pipeline.dataset import Split, open_split
from pipeline.graph import GraphInputs, host_output_names, make_pipeline, output_names
from pipeline.host import ParamSource, WholePlan
from pipeline.integrity import ReaderError, bad_records, refuse_failed_set
from pipeline.params import BatchClock
from pipeline.range_source import EpochOrder, RangeSource
from shards.card import has_checksums

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGES = ("current_global", "current_local", "past", "future")


def parse_device(device: str) -> tuple[str, int | None, torch.device]:
    """"cuda"/"cuda:N" → ("gpu", N, cuda:N); "cpu" → ("cpu", None, cpu); "host" → ("host", None, cpu).

    The one device decision of the pipeline.
    """
    if device in ("cpu", "host"):
        return device, None, torch.device("cpu")
    if device.startswith("cuda"):
        dev = torch.device(device)
        index = dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return "gpu", index, torch.device("cuda", index)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def seed_for(*words: int) -> int:
    """A 31-bit seed from a tuple of integers (stable across runs and machines)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0] & 0x7FFFFFFF)


def _to_torch(tl, dtype: torch.dtype | None) -> torch.Tensor:
    """A dense DALI TensorList as a torch tensor on its device, without a copy (DLPack; see the
    module docstring for the stream), cast to ``dtype`` when given."""
    out = torch.from_dlpack(tl.as_tensor())
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


_BUILDING: weakref.WeakSet = weakref.WeakSet()  # background builds in progress


def _finish_background_builds() -> None:
    """Wait for every background pipeline build: before the interpreter exits, and before range
    mode forks its reader processes (a fork copies whatever state another thread's DALI call is in)."""
    for b in list(_BUILDING):
        b.thread.join()


atexit.register(_finish_background_builds)


class _Background:
    """A pipeline built, and its first batch made, in a thread."""

    def __init__(self, key: tuple[int, int], make):
        self.key, self.result, self.error = key, None, None
        self.thread = threading.Thread(target=self._run, args=(make,), daemon=True)
        _BUILDING.add(self)
        self.thread.start()

    def _run(self, make) -> None:
        try:
            pipe = make()
            self.result = (pipe, pipe.run())
        except Exception as exc:  # handed to the consumer
            self.error = exc

    def take(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class TripletLoader:
    """Epochs of triplet batches for one rank; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, split: Split, *, batch_size: int, device: str,
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.split, self.batch_size = cfg, split, batch_size
        self.rank, self.world_size = rank, world_size
        self.dali_device, self.device_id, self.device = parse_device(device)
        self.dtype = TORCH_DTYPES[cfg.dtype]
        self.names = output_names(cfg)
        self.clips = cfg.workload in CLIP_WORKLOADS
        self.batches = (len(split.samples) * cfg.repeat // world_size) // batch_size
        self.sizes = np.array([(s.height, s.width) for s in split.samples], dtype=np.int64).reshape(-1, 2)
        self.labels = np.array([s.label_id for s in split.samples], dtype=np.int64)
        if cfg.read_mode == "range" and (self.sizes < 1).any():
            raise ValueError(f"{split.root / split.name / 'manifest.parquet'}: no frame height/width for some "
                             "samples (range mode draws crop windows from them); re-shard or use read_mode=whole")
        self.host_names = host_output_names(cfg, self.inputs(0)) if self.dali_device == "host" else []
        self._live = None  # range mode: [pipeline, (epoch, batch) of its next output]
        self._ahead: _Background | None = None  # whole mode: the next epoch's pipeline
        self._retried = None  # range mode: the pipeline of the last batch made again (its outputs' memory)

    def __len__(self) -> int:
        return self.batches

    def inputs(self, epoch: int, start_batch: int = 0, decode_batch: tuple[int, int] | None = None) -> GraphInputs:
        """What the pipeline starting at (``epoch``, ``start_batch``) reads, for this rank; range mode
        decodes the frames of ``decode_batch`` on the reader side (``_decoded_retry``)."""
        cfg, b = self.cfg, self.batch_size
        seed_words = (cfg.seed, self.rank)
        clock = BatchClock(epoch, start_batch, self.batches)
        if cfg.read_mode == "range":
            order = EpochOrder(len(self.split.samples), cfg.seed, self.rank, self.world_size, self.batches * b,
                               cfg.repeat)
            source = RangeSource(cfg, self.split, order, clock, b, seed_words, has_checksums(self.split.card),
                                 decode_batch)
            if self.clips:
                params = ClipParamSource(cfg, seed_words, clock, b, order, source.stats)
            else:
                params = ParamSource(cfg, seed_words, clock, b, order, self.sizes)
            return GraphInputs(source=source, params=params)
        rng = np.random.default_rng(seed_for(cfg.seed, epoch, 0x5A4D))
        perm = rng.permutation(len(self.split.tars))
        fill = max(1, min(cfg.shuffle_buffer, len(self.split.samples) // self.world_size))
        if self.clips:
            params, plan = ClipParamSource(cfg, seed_words, clock, b), WholeClipPlan(cfg, seed_words)
        else:
            params, plan = ParamSource(cfg, seed_words, clock, b), WholePlan(cfg, seed_words)
        return GraphInputs(params=params, files=[self.split.tars[i] for i in perm],
                           index_files=[self.split.indexes[i] for i in perm], shard_id=self.rank,
                           num_shards=self.world_size, reader_seed=seed_for(cfg.seed, self.rank, epoch),
                           initial_fill=fill, plan=plan)

    def pipeline(self, epoch: int, start_batch: int = 0, decode_batch: tuple[int, int] | None = None):
        """A built pipeline whose first output is batch ``start_batch`` of ``epoch`` (range mode)
        or batch 0 of ``epoch`` (whole mode)."""
        inputs = self.inputs(epoch, start_batch if self.cfg.read_mode == "range" else 0, decode_batch)
        if inputs.source is not None:
            _finish_background_builds()
        return make_pipeline(self.cfg, self.dali_device, self.device_id, batch_size=self.batch_size,
                             inputs=inputs, seed=seed_for(self.cfg.seed, self.rank, epoch))

    def _run(self, pipe):
        if self.device.type == "cuda":
            return pipe.run(cuda_stream=torch.cuda.current_stream(self.device))
        return pipe.run()

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """The batches of ``epoch`` from ``start_batch`` on."""
        if not 0 <= start_batch <= self.batches:
            raise ValueError(f"start_batch must be in [0, {self.batches}], got {start_batch}")
        if self.cfg.read_mode == "range":
            yield from self._iter_range(epoch, start_batch)
        else:
            yield from self._iter_whole(epoch, start_batch)

    def _iter_range(self, epoch: int, start_batch: int) -> Iterator[dict]:
        if self._live is None or self._live[1] != (epoch, start_batch):
            self._live = None  # drop the old pipeline (and its workers) before making another
            self._live = [self.pipeline(epoch, start_batch), (epoch, start_batch)]
        live = self._live
        for b in range(start_batch, self.batches):
            live[1] = (epoch, b + 1) if b + 1 < self.batches else (epoch + 1, 0)
            try:
                outs = self._run(live[0])
            except RuntimeError as exc:  # a frame DALI's decoder rejects although its checksum matched
                live[0] = None
                outs, self._retried = self._decoded_retry(epoch, b, exc)
                live[0] = self.pipeline(*live[1])
            except Exception as exc:  # DALI wraps a reader worker's ValueError in a plain Exception
                line = worker_value_error(exc)
                if line is None:
                    raise
                raise ReaderError(line) from None
            yield self._batch(outs)
            self._retried = None  # the batch is handed over and used: its pipeline can go

    def _decoded_retry(self, epoch: int, batch: int, error: Exception) -> tuple:
        """Batch ``batch`` of ``epoch`` again, its frames decoded on the reader side first (a frame
        libjpeg-turbo cannot decode cleanly makes its sample bad and replaced). Returns the outputs
        and the pipeline that made them (their memory); raises ValueError if DALI fails again."""
        pipe = self.pipeline(epoch, batch, decode_batch=(epoch, batch))
        try:
            return self._run(pipe), pipe
        except RuntimeError as again:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"epoch {epoch}, batch {batch}: the decoder failed ({first}), and again after "
                             f"decoding the batch's frames on the reader side: {str(again).splitlines()[0]}") from None

    def _iter_whole(self, epoch: int, start_batch: int) -> Iterator[dict]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.key == (epoch, 0):
            pipe, first = ahead.take()
        else:
            if ahead is not None:  # not the epoch asked for: let its build finish, then drop it
                ahead.thread.join()
            pipe = self.pipeline(epoch)
            first = self._run(pipe)
        self._ahead = _Background((epoch + 1, 0), lambda: self.pipeline(epoch + 1))
        try:
            for b in range(self.batches):
                outs = first if b == 0 else self._run(pipe)
                first = None
                if b >= start_batch:
                    yield self._batch(outs)
        finally:
            del pipe

    def _batch(self, outs) -> dict:
        names = self.host_names if self.dali_device == "host" else self.names
        raw = dict(zip(names, outs))
        batch: dict = {}
        slots = 3
        if self.dali_device == "host":
            batch["host"] = list(outs)
        elif self.clips:
            lay = layout_of(self.cfg)
            slots = lay.slots
            batch.update({n: _to_torch(raw[n], self.dtype) for n in lay.outputs})
            batch.update({n: _to_torch(raw[n], None).clone() for n in lay.labels})  # CPU; DALI reuses its buffers
            batch["decoded"] = torch.full((len(raw["info"]),), slots, dtype=torch.int64)  # JPEGs decoded per sample
        else:
            batch.update({n: _to_torch(raw[n], self.dtype) for n in IMAGES if n in raw})
            if "current_local" not in batch:
                g = batch["current_global"]
                size = self.cfg.local_size
                batch["current_local"] = g.new_empty((g.shape[0], 0, 3, size, size))
            if "raw" in raw:
                batch["raw"] = _to_torch(raw["raw"], None)
        info = _to_torch(raw["info"], torch.int64)
        batch["frame_idx"], batch["num_frames"] = info[:, :slots].clone(), info[:, slots].clone()
        if "meta" in raw:
            metas = [json.loads(np.asarray(raw["meta"][i]).tobytes()) for i in range(len(raw["meta"]))]
            batch["key"], labels = [m["key"] for m in metas], [int(m["label_id"]) for m in metas]
        else:
            ids = info[:, slots + 1].numpy()
            batch["key"], labels = [self.split.samples[i].key for i in ids.tolist()], self.labels[ids]
        batch["label"] = torch.as_tensor(labels, dtype=torch.int64)
        batch["bad"] = bad_records(raw["bad"], self.split) if "bad" in raw else []
        return batch


def worker_value_error(exc: Exception) -> str | None:
    """The message of the ``ValueError`` a range reader raised in a DALI worker process (bad data
    named by the reader), found in the text DALI passes on; None for any other error."""
    found = [m.group(1) for m in re.finditer(r"(?:ReaderError|ValueError): (.+)", str(exc))]
    return found[-1].strip() if found else None


def build_loader(cfg: PipelineConfig, shards_dir: str | Path, *, batch_size: int, device: str,
                 rank: int = 0, world_size: int = 1) -> TripletLoader:
    """Check the split's shards and return this rank's loader; ValueError on bad input.

    The offsets tables are verified by the ranks in turn (rank r checks every world_size-th
    shard); the cheap checks (sizes, index against the tar) run on every rank.
    """
    cfg.validate()
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
    if cfg.read_mode == "whole":
        refuse_failed_set(shards_dir)
    split = open_split(shards_dir, cfg.split, verify_offsets=cfg.verify_offsets, rank=rank, world_size=world_size,
                       tolerant=cfg.read_mode == "range")
    if len(split.samples) * cfg.repeat < world_size * batch_size:
        raise ValueError(f"split '{cfg.split}' of {shards_dir} has {len(split.samples)} samples, fewer than "
                         f"world_size × batch_size = {world_size} × {batch_size}: no full batch per rank")
    return TripletLoader(cfg, split, batch_size=batch_size, device=device, rank=rank, world_size=world_size)
