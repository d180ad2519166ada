"""Data shipped with the package: a sample image to try the service on (see NOTICE.md)."""

from pathlib import Path

#: A simulated 512x256 radio image with 102 point-like sources (Aegean's synthetic test image).
SAMPLE_IMAGE = Path(__file__).with_name("sample.fits")
