"""Checkpoint conversion, LoRA merge and shard splitting (no torch at import time)."""
