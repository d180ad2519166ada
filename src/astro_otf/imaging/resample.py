"""Block averaging: bring an image's beam within what a trained model has seen.

A network trained on beams of 2-7 pixels does not find sources in an image whose beam spans
12 pixels (AMI, LOFAR at fine sampling); averaging f x f pixel blocks narrows the beam to
1/f of its width in pixels while keeping Jy/beam units. Blank (NaN) pixels are left out of
each block's mean; a block with no valid pixel stays NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["block_mean"]


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block of ``data`` (float32); the last row
    and column of blocks cover what is left of the image."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    ny, nx = data.shape
    by, bx = -(-ny // factor), -(-nx // factor)
    padded = np.full((by * factor, bx * factor), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data
    blocks = padded.reshape(by, factor, bx, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        means: np.ndarray = np.nanmean(blocks, axis=(1, 3)).astype(np.float32)
    return means
