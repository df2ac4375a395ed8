"""Offline sharder: Kinetics-style video collections -> frame-indexed WebDataset shards."""

__version__ = "0.1.0"
FORMAT_VERSION = 2  # 2: per-frame CRC-32 (<key>.crc) and per-shard SHA-256; readers also accept 1
READABLE_VERSIONS = (1, 2)
