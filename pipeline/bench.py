"""Measuring loaders: throughput, CPU, memory and bytes read by a process and its children.

CPU time, ``rchar`` (bytes the processes asked the kernel to read) and RSS are summed over the
process tree from ``/proc``, so DataLoader workers and DALI's external-source workers count.
Readers use ``read``/``pread`` (DALI's reader is run without mmap), so ``rchar`` is the bytes
requested from storage; page-cache hits are still counted, which is what a network file
system would have to deliver. Bytes are counted from the loader's creation, so read-ahead
(shuffle buffers, prefetch) is included: an overcount that shrinks as runs get longer.
"""

from __future__ import annotations

import io
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pool

import numpy as np
from PIL import Image

from pipeline.dataset import Split

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def process_tree(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants."""
    todo, seen = [pid or os.getpid()], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def tree_usage(pids: list[int]) -> dict[str, float]:
    """Summed CPU seconds, rchar bytes and RSS bytes of ``pids``."""
    cpu = rchar = rss = 0.0
    for p in pids:
        stat = _read(f"/proc/{p}/stat")
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            rss += int(fields[21]) * PAGE
        for line in _read(f"/proc/{p}/io").splitlines():
            if line.startswith("rchar:"):
                rchar += int(line.split()[1])
    return {"cpu": cpu, "rchar": rchar, "rss": rss}


class PeakRss:
    """Background sampler of the process tree's summed RSS; ``peak`` in bytes."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_usage(process_tree())["rss"])
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(make_iter: Callable[[], Iterator[dict]], *, batch_size: int, batches: int, repeats: int,
            warmup: int, frames_per_sample: int = 3) -> dict[str, float]:
    """Run a loader: first-batch latency, then ``repeats`` timed runs of ``batches`` batches.

    A sample is a triplet (3 frames) or, for a clip workload, its clips (``frames_per_sample``
    delivered frames); "triplets" in the names below are samples."""
    ncpu = os.cpu_count() or 1
    with PeakRss() as peak:
        start, t0 = tree_usage(process_tree()), time.perf_counter()
        it = make_iter()
        next(it)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            next(it)
        rates, cpu, wall, decoded, triplets = [], 0.0, 0.0, 0.0, 0
        for _ in range(repeats):
            before, t = tree_usage(process_tree()), time.perf_counter()
            for _ in range(batches):
                b = next(it)
                decoded += float(b["decoded"].sum()) if "decoded" in b else float(frames_per_sample * batch_size)
            dt, after = time.perf_counter() - t, tree_usage(process_tree())
            rates.append(batches * batch_size / dt)
            cpu, wall = cpu + after["cpu"] - before["cpu"], wall + dt
            triplets += batches * batch_size
        # bytes: everything the tree read since the loader was made, over every triplet delivered
        # (readers fill shuffle buffers ahead, so a window would miss reads; this overcounts by
        # the read-ahead, at most the shuffle buffer plus the prefetched batches)
        rchar = after["rchar"] - start["rchar"]
        delivered = (1 + warmup) * batch_size + triplets
        del it
    tps = statistics.median(rates)
    return {"triplets_per_s": tps, "frames_per_s": frames_per_sample * tps,
            "decoded_per_delivered": decoded / (frames_per_sample * triplets),
            "first_batch_s": first, "cpu_util": cpu / wall / ncpu, "cpu_ms_per_triplet": 1000 * cpu / triplets,
            "peak_rss_mb": peak.peak / 2**20,
            "bytes_read_per_triplet": rchar / delivered, "repeats_triplets_per_s": rates}


def frame_bytes(split: Split, limit: int = 400) -> list[bytes]:
    """Up to ``limit`` JPEG frames of the split, spread over at most ``limit`` of its clips, read into memory."""
    out: list[bytes] = []
    per_clip = max(1, limit // max(1, len(split.samples)))
    picks = np.unique(np.linspace(0, len(split.samples) - 1, min(limit, len(split.samples))).astype(int))
    for ref in (split.samples[i] for i in picks):
        jpegs = ref.frame_jpegs()
        for i in np.linspace(0, ref.num_frames - 1, min(per_clip, ref.num_frames)).astype(int):
            out.append(jpegs[i])
    return out[:limit]


def _decode_all(jpegs: list[bytes]) -> int:
    for data in jpegs:
        Image.open(io.BytesIO(data)).convert("RGB").load()
    return len(jpegs)


def pil_decode_rate(jpegs: list[bytes], workers: int, seconds: float = 3.0) -> float:
    """Frames/s decoding ``jpegs`` with PIL (libjpeg-turbo) in ``workers`` processes."""
    chunks = [jpegs[i::workers] for i in range(workers)]
    with Pool(workers) as pool:
        pool.map(_decode_all, chunks)  # warm-up
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            done += sum(pool.map(_decode_all, chunks))
        return done / (time.perf_counter() - t0)


def dali_decode_rate(jpegs: list[bytes], device: str, device_id: int | None, threads: int, seconds: float = 3.0,
                     batch_size: int = 64) -> float:
    """Frames/s of DALI's image decoder alone (``cpu``, or ``mixed`` on a GPU) over ``jpegs``."""
    from nvidia.dali import fn, pipeline_def, types

    arrays = [np.frombuffer(j, dtype=np.uint8) for j in jpegs]

    def source(info):
        return [arrays[(info.iteration * batch_size + k) % len(arrays)] for k in range(batch_size)]

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0)
    def pipe():
        data = fn.external_source(source=source, batch=True, batch_info=True, dtype=types.UINT8)
        return fn.decoders.image(data, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    for _ in range(3):
        p.run()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.run()
        done += batch_size
    return done / (time.perf_counter() - t0)
