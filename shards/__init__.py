"""Offline sharder: Kinetics-style video collections -> frame-indexed WebDataset shards."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
