"""Run PyBDSF on the clean 2-D FITS image astro-otf hands it and write its source list.

Runs in the app's own environment (``make apps``), not the service's: only PyBDSF, numpy and
astropy are imported. The beam is passed explicitly (PyBDSF reads it from the header only
when BPA is present), and so is the frequency (a 2-D image has no FREQ axis). The source
list (srl) goes to ``--out`` as a FITS table; with no source, no file is written (the
service then reports an empty catalogue).
"""

import argparse
import sys

from astropy.io import fits

DEFAULT_FREQUENCY_HZ = 1.4e9


def main() -> int:
    """Run PyBDSF on the image named on the command line; the exit status for the service."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image")
    parser.add_argument("--out", required=True)
    parser.add_argument("--thresh-pix", type=float, default=5.0)
    parser.add_argument("--thresh-isl", type=float, default=3.0)
    parser.add_argument("--rms-box", type=int, default=0, help="0: PyBDSF chooses")
    parser.add_argument("--group-by-isl", default="false")
    parser.add_argument("--adaptive-rms-box", default="false")
    parser.add_argument("--catalog-type", default="srl", choices=("srl", "gaul"))
    args = parser.parse_args()

    import bdsf  # after the arguments: a usage error needs no PyBDSF import

    header = fits.getheader(args.image)
    beam = (float(header["BMAJ"]), float(header["BMIN"]), float(header.get("BPA", 0.0)))
    frequency = header.get("RESTFRQ")
    if not isinstance(frequency, (int, float)) or frequency <= 0:
        print(
            f"no frequency in the header: PyBDSF is given {DEFAULT_FREQUENCY_HZ:g} Hz "
            "(it only affects spectral-index work, not source finding)"
        )
        frequency = DEFAULT_FREQUENCY_HZ
    options = dict(
        thresh_pix=args.thresh_pix,
        thresh_isl=args.thresh_isl,
        beam=beam,
        frequency=float(frequency),
        ncores=1,
        quiet=True,
        group_by_isl=args.group_by_isl.lower() == "true",
        adaptive_rms_box=args.adaptive_rms_box.lower() == "true",
    )
    if args.rms_box > 0:
        options["rms_box"] = (args.rms_box, max(1, args.rms_box // 3))
    print("bdsf", bdsf.__version__, "process_image", {k: v for k, v in options.items()})
    sys.stdout.flush()
    img = bdsf.process_image(args.image, **options)
    nsrc = int(getattr(img, "nsrc", 0) or 0)
    ngaus = int(getattr(img, "ngaus", 0) or 0)
    print(f"PyBDSF found {nsrc} source(s) from {ngaus} Gaussian(s)")
    if nsrc:
        img.write_catalog(
            outfile=args.out, format="fits", catalog_type=args.catalog_type, clobber=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
