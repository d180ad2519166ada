"""Imaging: reading FITS images (memory-mapped) into a 2-D plane with its celestial WCS, and
cutting out regions of interest, so that every app sees the same, checked view of an upload."""
