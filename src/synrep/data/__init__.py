"""Data: the toy world, caption files (readers and dedup), the shard format, and training batches.

The bottom layer: it imports nothing else of synrep but the config and file IO.
"""
