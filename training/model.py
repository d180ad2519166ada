"""The detector network: a small CenterNet-style heatmap model at full resolution.

Why this shape: most radio sources are unresolved, beams (after the service's block
averaging) span 2-7 px and neighbours closer than a few beams are common, so the output keeps
the input's resolution (stride 1) instead of YOLO's 16 px cells. Version 2.0 has a fourth
encoder level at 1/8 resolution: it sees ~90 px around a pixel, enough to recognise the
sidelobes and calibration artefacts of a bright source several beams away, for ~4 % more
time than the three levels of 1.0 (ONNX Runtime on a CPU is bound by the full-resolution
layers). Per pixel it predicts the objectness of a source centred there (sigmoid) and eight
values read at the peaks: the sub-pixel offset (dx, dy), ln(peak / rms), ln(int / peak),
ln of the observed FWHM axes in pixels, and cos 2θ, sin 2θ of the major axis's pixel angle.

The exported graph ends in the peak finding the service's decoder expects: ``score`` (the
sigmoid), ``peak`` (1 where the score is the maximum of its 3x3 neighbourhood) and
``attrs`` (the eight values), so the decoder only reads pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from astro_otf.models.onnx_detector import ATTRIBUTE_CHANNELS

#: Names of the ``attrs`` channels, in order: the ones the service's decoder reads.
ATTRIBUTES = ATTRIBUTE_CHANNELS


#: Channels of the encoder levels of the shipped model (full, 1/2, 1/4 and 1/8 resolution).
WIDTHS = (16, 32, 48, 64)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Detector(nn.Module):
    """Input (N, 1, H, W), H and W multiples of 2^(levels - 1); outputs heat logits
    (N, 1, H, W) and attributes (N, 8, H, W). Three or four encoder levels (``widths``):
    each halves the resolution and widens the view; a top-down path with additive skips
    brings the coarse context back to full resolution."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        if len(widths) not in (3, 4):
            raise ValueError(f"three or four levels, not {len(widths)}")
        c1, c2, c3 = widths[:3]
        self.enc1 = nn.Sequential(_block(1, c1), _block(c1, c1))
        self.enc2 = nn.Sequential(_block(c1, c2, stride=2), _block(c2, c2))
        self.enc3 = nn.Sequential(_block(c2, c3, stride=2), _block(c3, c3), _block(c3, c3))
        self.levels = len(widths)
        if self.levels == 4:
            c4 = widths[3]
            self.enc4 = nn.Sequential(_block(c3, c4, stride=2), _block(c4, c4), _block(c4, c4))
            self.lat4 = nn.Conv2d(c4, c3, 1)
            self.dec3 = _block(c3, c3)
        self.lat3 = nn.Conv2d(c3, c2, 1)
        self.dec2 = _block(c2, c2)
        self.lat2 = nn.Conv2d(c2, c1, 1)
        self.dec1 = _block(c1, c1)
        self.head = nn.Sequential(_block(c1, c1), nn.Conv2d(c1, 1 + len(ATTRIBUTES), 1))
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[0] = -4.0  # start near "no source" everywhere
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        if self.levels == 4:
            f3 = self.dec3(f3 + self.up(self.lat4(self.enc4(f3))))
        d2 = self.dec2(f2 + self.up(self.lat3(f3)))
        d1 = self.dec1(f1 + self.up(self.lat2(d2)))
        out = self.head(d1)
        return out[:, :1], out[:, 1:]


class Exported(nn.Module):
    """The graph shipped as ONNX: score, peak mask and attributes."""

    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, attrs = self.net(image)
        score = torch.sigmoid(heat)
        peak = (score >= self.pool(score)).to(score.dtype)
        return score, peak, attrs
