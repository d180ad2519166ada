"""Batch forming: which queued jobs run together in one model forward pass."""
