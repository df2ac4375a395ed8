"""DALI sandwich-triplet pipeline over frame-indexed video shards, and reference loaders."""
