"""An app for every ONNX model in the registry: image -> tiles -> forward -> catalogue.

The model is data (its manifest says how to normalise, tile and decode), so this one class
serves every manifest. Each worker process keeps its sessions warm in one SessionCache.
The run is split in the stages the batch runner will share across jobs: prepare the tiles
(sized to the image when the manifest's ``input.size_multiple`` says the graph takes any
multiple of it, so a small image is not padded to a full tile), run them through the session
in chunks of ``max_batch_tiles`` of one shape, decode and stitch.

Decoding (``output.kind = "heatmap"``): a detection is a pixel flagged by the ``peak``
output whose score reaches THRESHOLD. With ``score_normalisation = "median_mad"`` the score
is first put in S/N units with the median and 1.4826 x MAD of the job's score map, measured
on up to ``STAT_TILES`` tiles spread over the image (valid pixels of the tile cores).

A model with ``output.attributes`` (the trained detector) also measures its sources: at each
peak the decoder reads the sub-pixel offset, the peak S/N, the integrated-to-peak ratio, the
FWHM axes and the axis angle, and turns them into fluxes (times the image rms its
``standardise`` step measured), arcsec and a position angle on the sky. MIN_SNR then applies
to the image's own pixels next to the peak. An image whose beam is wider than the manifest's
``max_beam_pix`` is block-averaged first, and its detections mapped back to its pixels.

A model with a ``[measure]`` table (radio-detector 2.0) only *proposes* with its network:
its normalisation divides the image by a local background and rms map, MIN_SNR reads the
brightest pixel within half a beam over the local rms, candidates that are one peak of the
image are merged, and each source is measured by a Gaussian fit to the image's pixels
(:mod:`astro_otf.imaging.measure`), with the network's estimates kept only where a fit fails.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.table import Column, Table

from astro_otf.batching.former import BatchKey
from astro_otf.domain.errors import JobFailure
from astro_otf.domain.job import Job
from astro_otf.domain.parameters import ParamSpec, roi_from, validate
from astro_otf.imaging.background import NoiseMap
from astro_otf.imaging.facts import image_facts
from astro_otf.imaging.fits import Region, SkyImage, cut, load_image, read_header_image, region_of
from astro_otf.imaging.gaussfit import covariance_of
from astro_otf.imaging.measure import (
    MeasureSettings,
    beam_pixel_cov,
    deconvolved_sky,
    measure,
    pixel_jacobians,
    sky_shapes,
    to_sky_errors,
)
from astro_otf.imaging.normalise import DEFAULT_BOX_BEAMS, FittedChain, parse_chain
from astro_otf.imaging.resample import block_mean
from astro_otf.imaging.stitch import Detection, position_angles, stitch, to_sky
from astro_otf.imaging.tiling import TilePlan, TileSpec, plan_tiles, read_tile, tile_grid
from astro_otf.models.base import AppOutput, AppRequest
from astro_otf.models.manifest import LoadedModel
from astro_otf.models.onnx_runtime import SessionCache, run
from astro_otf.results.catalogue import Catalogue, conform
from astro_otf.results.entities import file_entity

if TYPE_CHECKING:
    import onnxruntime as ort

STAT_TILES = 16
#: A region of interest is searched on the whole image's tiles that hold it, with this many
#: noise-map boxes of the image around them (out to the whole image's box grid), so that its
#: noise map, the network's input and the fits' stamps are those of the whole image's run;
#: only the sources inside the region are kept. Without it a small region measured its noise
#: on a mesh of a few boxes of its own, and found other sources than the whole image did.
REGION_PAD_BOXES = 2
#: Tile counts an app remembers (see OnnxDetector.count_tiles).
TILE_COUNTS_KEPT = 4096
MAD_TO_SIGMA = 1.4826
#: Working memory one forward pass may take, from the manifest's ``tile_memory_mb``: a pass
#: holds at most this much worth of tiles (and at most ``max_batch_tiles``).
FORWARD_MEMORY_MB = 512
#: What :meth:`OnnxDetector.forward` yields per tile: job, tile, tile input, score, peak
#: mask and attributes (None when the model has none).
_Forwarded = tuple["_Prepared", TileSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]

#: The attribute channels the decoder knows (``output.attribute_channels``): sub-pixel
#: offset of the centre from the peak pixel, ln(peak / image rms), ln(integrated / peak
#: flux) in beams, ln of the observed FWHM axes in pixels, and the major axis's pixel angle
#: (from +x towards +y) as cos 2t, sin 2t.
ATTRIBUTE_CHANNELS = (
    "dx",
    "dy",
    "log_peak_snr",
    "log_int_over_peak",
    "log_maj",
    "log_min",
    "cos2t",
    "sin2t",
)


@dataclass(frozen=True)
class RuntimeConfig:
    """How a worker runs ONNX models (from Settings)."""

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0  # 0: cores / workers
    session_memory_mb: int = 2048
    max_batch_tiles: int = 32
    workers: int = 1

    def threads(self) -> int:
        """ONNX Runtime intra-op threads per session: as configured, else the cores shared
        out among the workers (at least one)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


_caches: dict[RuntimeConfig, SessionCache] = {}


def session_cache(config: RuntimeConfig) -> SessionCache:
    """This process's cache for ``config`` (one per worker: sessions stay warm)."""
    if config not in _caches:
        _caches[config] = SessionCache(
            config.session_memory_mb, list(config.providers), config.threads()
        )
    return _caches[config]


class OnnxDetector:
    """The App for one ONNX model version."""

    needs_image = True

    def __init__(self, model: LoadedModel, runtime: RuntimeConfig) -> None:
        manifest = model.manifest
        if manifest.output.kind != "heatmap" or manifest.output.peak is None:
            raise ValueError(f"{model.path}: only heatmap outputs with a peak mask are decoded")
        self.model = model
        self.runtime = runtime
        self.model_id = model.model_id
        self.version = model.version
        self.description = manifest.description
        self.precisions: tuple[str, ...] = tuple(manifest.precisions)
        self.parameters: tuple[ParamSpec, ...] = manifest.parameter_specs()
        self._chain = parse_chain(manifest.normalisation)
        #: Tile counts worked out: (image, its size and mtime, parameters) -> tiles. The
        #: scheduler asks twice per job (its quote at RUN, then its first sight of it queued).
        self._counts: OrderedDict[tuple[object, ...], int] = OrderedDict()
        unknown = set(manifest.output.attribute_channels) - set(ATTRIBUTE_CHANNELS)
        if unknown:
            raise ValueError(
                f"{model.path}: output.attribute_channels {sorted(unknown)} are not decoded; "
                f"known: {', '.join(ATTRIBUTE_CHANNELS)}"
            )
        self._attr = {name: i for i, name in enumerate(manifest.output.attribute_channels)}

    # -- what the scheduler asks before a job runs --------------------------------------

    def batch_key(self, precision: str | None) -> BatchKey:
        """The model's key; its tile shape is the largest tile the model takes. Tiles sized
        to smaller images share the batch and run in one pass per shape (:meth:`forward`),
        so jobs of any image size still share the loaded model and one batch."""
        tile = self.model.manifest.tiling.tile
        return BatchKey(self.model_id, self.version, self.model.precision(precision), (tile, tile))

    def count_tiles(self, image_path: str | None, job: Job) -> int:
        """Tiles the job runs, from its image's header alone: the plan :meth:`prepare` runs
        (:meth:`plan`), for the whole image or its region of interest, in pixels or an angle,
        after any block averaging. 1 when the header or the parameters can't tell (the job
        then fails in its worker with the reason)."""
        try:
            stat = os.stat(image_path or "")
        except OSError:
            return 1
        params = job.parameter_values()
        key = (image_path, stat.st_size, stat.st_mtime_ns, tuple(sorted(params.items())))
        count = self._counts.get(key)
        if count is None:
            count = self._count_tiles(Path(image_path or ""), params)
            self._counts[key] = count
            while len(self._counts) > TILE_COUNTS_KEPT:
                self._counts.popitem(last=False)
        return count

    def _count_tiles(self, image_path: Path, params: dict[str, str]) -> int:
        try:
            image = read_header_image(image_path)
            checked = validate(
                params,
                ["image"],
                self.parameters,
                precisions=self.precisions,
                model_id=self.model_id,
                image_required=False,
            )
            roi = roi_from(checked.values)
            region = None if roi is None else region_of(image, roi)
            return self.plan(image, region).count
        except Exception:
            return 1

    def plan(self, image: SkyImage, region: Region | None) -> TilePlan:
        """How this model searches ``image`` (or its ``region``): one plan for the batch
        former's tile budget and the run."""
        manifest = self.model.manifest
        step = next((s for s in self._chain.steps if s.op == "local_standardise"), None)
        return plan_tiles(
            image.shape,
            image.beam_major_pix,
            None if region is None else region.box,
            tile=manifest.tiling.tile,
            overlap=manifest.tiling.overlap,
            multiple=manifest.input.size_multiple,
            max_beam_pix=manifest.input.max_beam_pix,
            noise_box_beams=None if step is None else float(step.box_beams or DEFAULT_BOX_BEAMS),
            pad_boxes=REGION_PAD_BOXES,
        )

    # -- the stages a batch shares ------------------------------------------------------

    def prepare(self, request: AppRequest) -> _Prepared:
        """Load, cut out, fit the normalisation and plan the tiles of one job."""
        if request.image_path is None:
            raise JobFailure("IMAGE is required")
        request.progress("reading")
        manifest = self.model.manifest
        image = load_image(request.image_path)
        full_shape = image.shape
        region: Region | None = None
        region_image = image
        region_specs: list[TileSpec] | None = None
        if request.roi is not None:
            region = region_of(image, request.roi)
            region_image = cut(image, region.box)
            if region.clipped:
                request.log.warning("%s", region.describe_clipping())
        plan = self.plan(image, region)
        if region is not None:
            region_specs = plan.tiles
            image = cut(image, plan.searched)
            request.log.info(
                "region of interest: %d x %d pixels from pixel x=%d, y=%d, searched with a "
                "margin: %d x %d pixels from pixel x=%d, y=%d",
                region.width,
                region.height,
                *region.box[:2],
                image.shape[1],
                image.shape[0],
                *image.origin,
            )
        if not _any_finite(image.data):
            raise JobFailure("the image (or region) has no valid pixels: all are NaN or BLANK")
        factor = plan.factor
        pixels = image.data
        if factor > 1:
            pixels = block_mean(image.data, factor)
            request.log.info(
                "beam of %.3g px is wider than the model's %.3g px: averaging %dx%d pixel "
                "blocks (%s -> %s px)",
                image.beam_major_pix,
                manifest.input.max_beam_pix,
                factor,
                factor,
                image.shape,
                pixels.shape,
            )
        specs = region_specs or tile_grid(
            pixels.shape,
            manifest.tiling.tile,
            manifest.tiling.overlap,
            multiple=manifest.input.size_multiple,
        )
        threshold = float(request.values.get("threshold", manifest.postprocess.score_threshold))
        min_snr = request.values.get("min_snr", manifest.postprocess.min_snr)
        beam = image.beam_major_pix
        chain = self._chain.fit(pixels, beam_pix=None if beam is None else beam / factor)
        # a measured model's MIN_SNR reads the brightest pixel within half a beam of its
        # candidate, as the classical finders read their islands' peak pixels
        radius = 1
        if manifest.measure is not None:
            radius = max(1, round(0.5 * (beam / factor if beam else self._beam)))
        return _Prepared(
            request,
            image,
            chain,
            specs,
            threshold,
            full_shape,
            pixels,
            factor,
            min_snr=None if min_snr is None else float(min_snr),
            peak_radius=radius,
            region=region,
            region_image=region_image,
        )

    def forward(
        self, items: list[tuple[_Prepared, TileSpec]], precision: str
    ) -> Iterator[_Forwarded]:
        """(job, tile, tile input, score, peak, attributes or None) for every item: tiles of
        many jobs go through one forward pass, at most ``max_batch_tiles`` at a time; a pass
        that runs out of memory is split in halves and retried. A pass takes tiles of one
        shape (ONNX Runtime feeds one tensor): tiles sized to their images are grouped by
        shape, in the order each shape first comes."""
        session = session_cache(self.runtime).get(self.model, precision)
        groups: dict[tuple[int, int], list[tuple[_Prepared, TileSpec]]] = {}
        for item in items:
            groups.setdefault(item[1].shape, []).append(item)
        for shape, group in groups.items():
            yield from self._forward_shape(session, group, self._pass_tiles(shape))

    def _pass_tiles(self, shape: tuple[int, int]) -> int:
        """Tiles of ``shape`` one pass takes: ``max_batch_tiles``, fewer when the manifest's
        ``tile_memory_mb`` (of a full tile; memory goes with the pixels) would pass
        FORWARD_MEMORY_MB."""
        manifest = self.model.manifest
        step = self.runtime.max_batch_tiles
        if manifest.tile_memory_mb:  # big tiles: fewer per pass, about the same memory
            full = manifest.tiling.tile**2
            per_tile = manifest.tile_memory_mb * shape[0] * shape[1] / full
            step = max(1, min(step, int(FORWARD_MEMORY_MB // per_tile)))
        return step

    def _forward_shape(
        self, session: ort.InferenceSession, items: list[tuple[_Prepared, TileSpec]], step: int
    ) -> Iterator[_Forwarded]:
        """:meth:`forward` for tiles of one shape, ``step`` at a time."""
        manifest = self.model.manifest
        failures: tuple[type[BaseException], ...] = (MemoryError, *ort_errors())
        start = 0
        while start < len(items):
            chunk = items[start : start + step]
            raw = [read_tile(p.pixels, spec, fill=np.nan) for p, spec in chunk]
            try:
                batch = np.stack(
                    [
                        p.chain.apply(t, (spec.y0, spec.x0))
                        for (p, spec), t in zip(chunk, raw, strict=True)
                    ]
                )
                out = run(session, batch[:, None, :, :], input_name=manifest.input.name)
            except failures as exc:
                if len(chunk) == 1 or not _out_of_memory(exc):
                    raise
                step = max(1, len(chunk) // 2)
                for p in {id(p): p for p, _ in chunk}.values():  # each job of the chunk once
                    p.request.log.warning(
                        "forward of %d tiles ran out of memory; retrying %d at a time",
                        len(chunk),
                        step,
                    )
                continue
            score = out[manifest.output.score][:, 0]
            peak = out[manifest.output.peak][:, 0]  # type: ignore[index]
            attrs = out[manifest.output.attributes] if manifest.output.attributes else None
            for i, (p, spec) in enumerate(chunk):
                yield p, spec, raw[i], score[i], peak[i], None if attrs is None else attrs[i]
            start += len(chunk)

    def run(self, request: AppRequest) -> AppOutput:
        """Run one job as a batch of one; its failure is raised."""
        result = self.run_batch([request])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def run_batch(self, requests: list[AppRequest]) -> list[AppOutput | BaseException]:
        """Run several jobs of this model together. A job's own failure (bad input) is
        returned in its place; the others go on."""
        manifest = self.model.manifest
        results: dict[int, AppOutput | BaseException] = {}
        jobs: dict[int, _Prepared] = {}
        precisions = {self.model.precision(r.values.get("precision")) for r in requests}
        if len(precisions) != 1:
            raise ValueError(f"one batch runs one precision, not {sorted(precisions)}")
        precision = precisions.pop()
        for n, request in enumerate(requests):
            try:
                jobs[n] = self.prepare(request)
                rows, cols = jobs[n].specs[0].shape
                request.log.info(
                    "%s %s (%s): %d tile(s) of %dx%d px over %s px, batch of %d job(s)",
                    self.model_id,
                    self.version,
                    precision,
                    len(jobs[n].specs),
                    rows,
                    cols,
                    jobs[n].image.shape,
                    len(requests),
                )
            except Exception as exc:
                results[n] = exc
        for p in jobs.values():
            p.request.progress("inference", 0, len(p.specs))
        if manifest.output.score_normalisation == "median_mad":
            # Small images measure their score map in the detection pass itself (candidates
            # are kept until the rms is known); big ones first sample STAT_TILES tiles.
            big = {n: p for n, p in jobs.items() if len(p.specs) > STAT_TILES}
            self._score_stats(big, results, precision)
            for n, p in jobs.items():
                p.deferred = n not in big
            for n in [n for n in jobs if n in results]:
                del jobs[n]
        items = [(p, spec) for p in jobs.values() for spec in p.specs]
        for p, spec, raw, score, peak, attrs in self.forward(items, precision):
            p.tiles_done += 1
            p.request.progress("inference", p.tiles_done, len(p.specs))
            if attrs is not None:
                ys, xs = np.nonzero((peak > 0.5) & (score >= p.threshold) & np.isfinite(raw))
                snr = _pixel_snr(p.chain, raw, xs, ys, (spec.x0, spec.y0), p.peak_radius)
                found = self._measured(spec, xs, ys, score, attrs, snr)
                if p.min_snr is not None:
                    found = [d for d in found if d.extra["snr"] >= p.min_snr]
                p.per_tile.append((spec, found))
            elif p.deferred:
                p.pool.append(_core_values(spec, raw, score))
                ys, xs = np.nonzero((peak > 0.5) & np.isfinite(raw))
                p.candidates.append((spec, ys, xs, score[ys, xs], raw[ys, xs]))
            else:
                ys, xs, snr = _above(score, peak, raw, p.median, p.rms, p.threshold)
                p.per_tile.append((spec, self._detections(spec, xs, ys, snr, raw[ys, xs])))
        for n, p in list(jobs.items()):
            if not p.deferred:
                continue
            try:
                p.median, p.rms = _robust_stats(p.pool)
            except JobFailure as exc:
                results[n] = exc
                del jobs[n]
                continue
            p.request.log.info("score map: median %.4g, rms %.4g (MAD)", p.median, p.rms)
            for spec, ys, xs, values, peaks in p.candidates:
                snr = (values - p.median) / p.rms
                keep = snr >= p.threshold
                p.per_tile.append(
                    (spec, self._detections(spec, xs[keep], ys[keep], snr[keep], peaks[keep]))
                )
        for n, p in jobs.items():
            try:
                results[n] = self._write(p, precision)
            except Exception as exc:
                results[n] = exc
        return [results[n] for n in range(len(requests))]

    @property
    def _beam(self) -> float:
        return self.model.manifest.input.beam_fwhm_pix or 3.0

    def _write(self, p: _Prepared, precision: str) -> AppOutput:
        request = p.request
        request.progress("fitting")
        if self.model.manifest.measure is not None:
            table = self._fitted_table(p)
        elif self._attr:
            table = self._measured_table(p)
        else:
            table = self._peak_table(p)
        if p.region is not None:  # the margin only served the noise map and the context
            inside = p.region.contains(np.asarray(table["x"]), np.asarray(table["y"]))
            table = table[inside]
            if "id" in table.colnames:
                table["id"][:] = np.arange(1, len(table) + 1)
        rms = self._searched_rms(p)
        file = self.model.file(precision)
        model_files = [
            file_entity(
                "model",
                file,
                "application/octet-stream",
                {
                    "model_id": self.model_id,
                    "model_version": self.version,
                    "precision": precision,
                    "format": "onnx",
                },
                sha256=self.model.sha256(precision),  # its session loaded these bytes, verified
            ),
            file_entity("manifest", self.model.path, "application/toml"),
        ]
        request.log.info("%d source(s) above a score of %.3g", len(table), p.threshold)
        searched = p.region_image if p.region_image is not None else p.image
        return AppOutput(
            catalogue=Catalogue(
                table,
                facts=image_facts(
                    searched,
                    full_shape=p.full_shape,
                    rms=rms,
                    rms_unit=_flux_unit(p.image),
                    region=p.region,
                ),
                infos={
                    "precision": precision,
                    "model_sha256": self.model.sha256(precision),
                    "score_median": f"{p.median:.6g}",
                    "score_rms": f"{p.rms:.6g}",
                },
                description=f"Sources found by {self.model_id} {self.version} in job "
                f"{request.job_id}.",
                model_files=model_files,
            ),
            image=searched,
            info={
                "n_sources": len(table),
                "tiles": len(p.specs),
                "precision": precision,
                "score_rms": p.rms,
                **({} if rms is None else {"rms": rms, "rms_unit": _flux_unit(p.image)}),
                **({} if p.region is None else p.region.info()),
            },
        )

    def _searched_rms(self, p: _Prepared) -> float | None:
        """The image-level rms of the searched region, in image units: the median of the
        local noise map over it (for a region, over the region, not its margin), else the
        rms of the chain's ``standardise``, else 1.4826 MAD of the region's pixels (a model
        whose normalisation measures no noise); None when that cannot be measured."""
        ny, nx = p.image.shape
        x0, y0, x1, y1 = 0, 0, nx, ny
        if p.region is not None:
            ox, oy = p.image.origin
            bx0, by0, bx1, by1 = p.region.box
            x0, y0, x1, y1 = bx0 - ox, by0 - oy, bx1 - ox, by1 - oy
        noise = p.chain.noise_map
        if noise is None:
            if p.chain.noise is not None:
                return float(p.chain.noise[1])
            return _mad_rms(p.image.data[y0:y1, x0:x1])
        f = p.factor  # the map is in the (block-averaged) pixels the tiles were cut from
        _, rms = noise.window(y0 // f, -(-y1 // f), x0 // f, -(-x1 // f))
        return float(np.median(rms))

    def _peak_table(self, p: _Prepared) -> Table:
        """The catalogue of a model that gives positions only (peaks of an S/N map)."""
        found = to_sky(stitch(p.per_tile), p.image.wcs, p.image.origin)
        table = conform(
            found,
            peak_unit=_flux_unit(p.image),
            descriptions={
                "score": "S/N of the detection (matched-filter score over the map rms).",
                "peak_flux": "Pixel value at the detected peak.",
                "maj": "Not measured by this model (it finds positions of compact sources).",
                "min": "Not measured by this model.",
                "pa": "Not measured by this model.",
                "int_flux": "Not measured by this model.",
                "class": "Not given by this model.",
            },
        )
        for name in ("width", "height"):
            table[name].description = f"Box {name} used to merge detections across tiles."
        return table

    def _measured_table(self, p: _Prepared) -> Table:
        """The catalogue of a model that measures its sources (``output.attributes``):
        fluxes from its S/N outputs times the image rms, sizes from pixels to arcsec, the
        pixel angle turned into a position angle on the sky through the WCS."""
        f = p.factor
        detections = stitch(p.per_tile)
        if f > 1:  # back to the uploaded image's pixels: block i covers f*i .. f*i + f - 1
            detections = [
                Detection(
                    f * d.x + (f - 1) / 2,
                    f * d.y + (f - 1) / 2,
                    d.width * f,
                    d.height * f,
                    d.score,
                    {
                        **d.extra,
                        "maj_pix": d.extra["maj_pix"] * f,
                        "min_pix": d.extra["min_pix"] * f,
                    },
                )
                for d in detections
            ]
        found = to_sky(detections, p.image.wcs, p.image.origin)
        noise = p.chain.noise
        if noise is None:
            raise JobFailure(
                f"model {self.model_id} {self.version}: its normalisation has no 'standardise' "
                "step, so its S/N outputs cannot be turned into fluxes"
            )
        peak_unit = _flux_unit(p.image)
        int_unit = "Jy" if peak_unit == "Jy/beam" else ""

        def extra(name: str) -> np.ndarray:
            return np.array([d.extra[name] for d in detections], dtype=np.float64)

        rms = noise[1]
        snr = extra("peak_snr")
        scale = p.image.pixel_scale_arcsec
        found.keep_columns(
            [c for c in ("ra", "dec", "x", "y", "score", "tile") if c in found.colnames]
        )
        found["peak_flux"] = snr * rms
        found["peak_flux_err"] = np.full(len(found), rms)
        if int_unit:
            found["int_flux"] = snr * rms * extra("int_over_peak")
        found["maj"] = extra("maj_pix") * scale
        found["min"] = extra("min_pix") * scale
        x = np.array([d.x for d in detections])
        y = np.array([d.y for d in detections])
        found["pa"] = position_angles(p.image.wcs, x, y, extra("theta"))
        found["snr"] = Column(
            extra("snr"),
            unit="",
            description="S/N of the image itself at the source: the brightest pixel of the "
            "3x3 around the detected peak, less the image median, over the image rms. "
            "MIN_SNR applies to it.",
            meta={"ucd": "stat.snr"},
        )
        return conform(
            found,
            peak_unit=peak_unit,
            int_unit=int_unit,
            score_ucd="stat.probability",
            descriptions={
                "ra": "Right ascension (ICRS) of the centre the model found.",
                "dec": "Declination (ICRS) of the centre the model found.",
                "ra_err": "Not estimated by this model.",
                "dec_err": "Not estimated by this model.",
                "score": "Objectness: the model's probability that a source is centred here.",
                "peak_flux": "Peak surface brightness, the model's S/N times the image rms "
                "(1.4826 MAD of the whole image).",
                "peak_flux_err": "The image rms: the 1-sigma error of a peak.",
                "int_flux": "Integrated flux density, peak_flux times the model's "
                "integrated-to-peak ratio in beams"
                + ("." if int_unit else " (blank: the image unit is not Jy/beam)."),
                "int_flux_err": "Not estimated by this model.",
                "maj": "Major axis FWHM as observed (convolved with the beam), not deconvolved.",
                "min": "Minor axis FWHM as observed (convolved with the beam), not deconvolved.",
                "pa": "Position angle of the major axis, degrees East of North (ICRS), 0 to 180.",
                "class": "Not given by this model.",
            },
        )

    def _beam_cov(self, image: SkyImage) -> np.ndarray:
        """The beam's covariance in the uploaded image's pixels (at its centre): from
        BMAJ/BMIN/BPA, else the manifest's beam, round."""
        ny, nx = image.shape
        beam = image.beam
        if beam is not None:
            return beam_pixel_cov(
                image.wcs,
                (nx - 1) / 2,
                (ny - 1) / 2,
                beam.major_deg * 3600,
                beam.minor_deg * 3600,
                beam.pa_deg,
            )
        fwhm = self._beam
        return covariance_of(np.array(fwhm), np.array(fwhm), np.array(0.0))

    def _fitted_table(self, p: _Prepared) -> Table:
        """The catalogue of a model whose candidates are measured by Gaussian fits to the
        image (``[measure]``): merged where they are one peak, fitted on the local
        background, with Condon (1997) errors; the network's estimates where a fit fails."""
        spec = self.model.manifest.measure
        assert spec is not None
        f = p.factor
        detections = stitch(p.per_tile)
        noise = p.chain.noise_map
        if noise is None:
            if p.chain.noise is None:
                raise JobFailure(
                    f"model {self.model_id} {self.version}: its normalisation measures no "
                    "noise, so its sources cannot be fitted"
                )
            median, rms = p.chain.noise
            noise = NoiseMap(p.pixels.shape, max(p.pixels.shape), np.full((1, 1), median),
                             np.full((1, 1), rms))  # fmt: skip

        def extra(name: str) -> np.ndarray:
            return np.array([d.extra[name] for d in detections], dtype=np.float64)

        x = np.array([d.x for d in detections], dtype=np.float64)
        y = np.array([d.y for d in detections], dtype=np.float64)
        beam_cov = self._beam_cov(p.image)
        guess_peak = guess_cov = guess_int = None
        if detections:
            rms_at = noise.at(x, y)[1].astype(np.float64)
            guess_peak = extra("peak_snr") * rms_at
            guess_int = extra("int_over_peak")
            guess_cov = covariance_of(extra("maj_pix") * f, extra("min_pix") * f, extra("theta"))
        m = measure(
            p.pixels,
            noise,
            x,
            y,
            beam_cov,
            factor=f,
            guess_cov=guess_cov,
            guess_peak=guess_peak,
            guess_int_beams=guess_int,
            settings=MeasureSettings(
                stamp_beams=spec.stamp_beams,
                max_sep_beams=spec.max_sep_beams,
                near_beams=spec.near_beams,
                dip_sigma=spec.dip_sigma,
                excess_sigma=spec.excess_sigma,
                duplicate_beams=spec.duplicate_beams,
            ),
        )
        kept = [detections[i] for i in m.kept.tolist()]
        placed = [
            Detection(float(m.x[i]), float(m.y[i]), d.width * f, d.height * f, d.score, d.extra)
            for i, d in enumerate(kept)
        ]
        found = to_sky(placed, p.image.wcs, p.image.origin)
        found.keep_columns(
            [c for c in ("ra", "dec", "x", "y", "score", "tile") if c in found.colnames]
        )
        peak_unit = _flux_unit(p.image)
        # Jy/beam to Jy needs the beam: without BMAJ/BMIN the integrated flux stays blank
        int_unit = "Jy" if peak_unit == "Jy/beam" and p.image.beam is not None else ""
        jac = pixel_jacobians(p.image.wcs, m.x, m.y)
        maj, mn, pa = sky_shapes(jac, m.cov)
        ra_err, dec_err = to_sky_errors(jac, m.cov, m.cov_err["x_major"], m.cov_err["y_minor"])
        dmaj, dmin, dpa = deconvolved_sky(jac, m.cov, beam_cov)
        found["ra_err"] = ra_err
        found["dec_err"] = dec_err
        found["peak_flux"] = m.peak
        found["peak_flux_err"] = m.peak_err
        if int_unit:
            found["int_flux"] = m.peak * m.int_beams
            found["int_flux_err"] = m.peak * m.int_beams * m.int_rel_err
        found["maj"] = maj
        found["min"] = mn
        found["pa"] = pa
        snr = np.array([d.extra["snr"] for d in kept], dtype=np.float64)
        columns = (
            ("snr", snr, "", "stat.snr", "S/N of the image itself at the source: the "
             "brightest pixel next to the detected peak, less the local background, over the "
             "local rms. MIN_SNR applies to it."),
            ("local_rms", m.rms, peak_unit, "stat.stdev;phot.flux.density",
             "Local rms of the image at the source (background and rms map)."),
            ("maj_deconv", dmaj, "arcsec", "phys.angSize.smajAxis;src",
             "Major axis FWHM deconvolved from the beam (0: unresolved)."),
            ("min_deconv", dmin, "arcsec", "phys.angSize.sminAxis;src",
             "Minor axis FWHM deconvolved from the beam (0: unresolved)."),
            ("pa_deconv", dpa, "deg", "pos.posAng;src",
             "Position angle of the deconvolved major axis, East of North."),
        )  # fmt: skip
        for name, values, unit, ucd, description in columns:
            found[name] = Column(values, unit=unit, description=description, meta={"ucd": ucd})
        found["fitted"] = Column(
            m.fitted,
            unit="",
            description="True where a Gaussian was fitted to the image; False where the fit "
            "failed and the network's own estimates of flux and size are given.",
            meta={"ucd": "meta.code.qual"},
        )
        return conform(
            found,
            peak_unit=peak_unit,
            int_unit=int_unit,
            score_ucd="stat.probability",
            descriptions={
                "ra": "Right ascension (ICRS) of the fitted Gaussian's centre.",
                "dec": "Declination (ICRS) of the fitted Gaussian's centre.",
                "ra_err": "1-sigma error of ra (Condon 1997), as an angle on the sky.",
                "dec_err": "1-sigma error of dec (Condon 1997).",
                "score": "Objectness: the model's probability that a source is centred here.",
                "peak_flux": "Peak of the Gaussian fitted to the image on its local background.",
                "peak_flux_err": "1-sigma error of peak_flux (Condon 1997, local rms).",
                "int_flux": "Integrated flux density of the fitted Gaussian: peak_flux x maj x "
                "min / (BMAJ x BMIN)"
                + (
                    "."
                    if int_unit
                    else " (blank: the image is not in Jy/beam, or its header gives no beam)."
                ),
                "int_flux_err": "1-sigma error of int_flux (Condon 1997, his eq. 42).",
                "maj": "Major axis FWHM of the fitted Gaussian (convolved with the beam).",
                "min": "Minor axis FWHM of the fitted Gaussian (convolved with the beam).",
                "pa": "Position angle of the fitted major axis, degrees East of North (ICRS).",
                "class": "Not given by this model.",
            },
        )

    def _measured(
        self,
        spec: TileSpec,
        xs: np.ndarray,
        ys: np.ndarray,
        score: np.ndarray,
        attrs: np.ndarray,
        pixel_snr: np.ndarray,
    ) -> list[Detection]:
        """Detections at the peak pixels (xs, ys) of a tile, with the attributes read there
        and the S/N of the image's own pixels there (``pixel_snr``)."""
        values = {name: attrs[i][ys, xs].astype(np.float64) for name, i in self._attr.items()}
        zero = np.zeros(len(xs))
        x = xs + values.get("dx", zero)
        y = ys + values.get("dy", zero)
        peak_snr = np.exp(values["log_peak_snr"]) if "log_peak_snr" in values else zero + np.nan
        ratio = (
            np.exp(values["log_int_over_peak"]) if "log_int_over_peak" in values else zero + np.nan
        )
        beam = self._beam
        maj = np.exp(values["log_maj"]) if "log_maj" in values else zero + beam
        mn = np.exp(values["log_min"]) if "log_min" in values else maj
        maj, mn = np.maximum(maj, mn), np.minimum(maj, mn)
        theta = 0.5 * np.arctan2(values.get("sin2t", zero), values.get("cos2t", zero + 1.0))
        return [
            Detection(
                float(x[i]),
                float(y[i]),
                float(maj[i]),
                float(maj[i]),
                float(score[ys[i], xs[i]]),
                {
                    "snr": float(pixel_snr[i]),
                    "peak_snr": float(peak_snr[i]),
                    "int_over_peak": float(ratio[i]),
                    "maj_pix": float(maj[i]),
                    "min_pix": float(mn[i]),
                    "theta": float(theta[i]),
                    "tile": float(spec.index),
                },
            )
            for i in range(len(xs))
        ]

    def _detections(
        self, spec: TileSpec, xs: np.ndarray, ys: np.ndarray, snr: np.ndarray, peak: np.ndarray
    ) -> list[Detection]:
        beam = self._beam
        return [
            Detection(
                float(x),
                float(y),
                beam,
                beam,
                float(v),
                {"peak_flux": float(f), "tile": float(spec.index)},
            )
            for x, y, v, f in zip(xs, ys, snr, peak, strict=True)
        ]

    def _score_stats(
        self,
        jobs: dict[int, _Prepared],
        results: dict[int, AppOutput | BaseException],
        precision: str,
    ) -> None:
        """Median and MAD rms of each job's score map, from up to STAT_TILES of its tiles;
        the tiles of all the batch's jobs share forward passes here too."""
        items = []
        for p in jobs.values():
            every = max(1, math.ceil(len(p.specs) / STAT_TILES))
            items += [(p, spec) for spec in p.specs[::every]]
        for p, spec, raw, score, _, _ in self.forward(items, precision):
            p.pool.append(_core_values(spec, raw, score))
        for n, p in jobs.items():
            try:
                p.median, p.rms = _robust_stats(p.pool)
                p.request.log.info("score map: median %.4g, rms %.4g (MAD)", p.median, p.rms)
            except JobFailure as exc:
                results[n] = exc
            p.pool.clear()


def _pixel_snr(
    chain: FittedChain,
    raw: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    origin: tuple[int, int] = (0, 0),
    radius: int = 1,
) -> np.ndarray:
    """The S/N of the image at the pixels (xs, ys) of a tile whose [0, 0] is image pixel
    ``origin`` (x, y): the brightest valid pixel within ``radius`` pixels (a square), less
    the background, over the rms (the local map's where the chain has one)."""
    noise = chain.noise
    if noise is None or len(xs) == 0:
        return np.full(len(xs), np.nan)
    padded = np.pad(raw, radius, constant_values=np.nan)
    span = range(-radius, radius + 1)
    around = np.stack([padded[ys + radius + dy, xs + radius + dx] for dy in span for dx in span])
    local = chain.noise_map
    if local is not None:
        median, rms = local.at(xs + origin[0], ys + origin[1])
    else:
        median = np.full(len(xs), noise[0], dtype=np.float32)
        rms = np.full(len(xs), noise[1], dtype=np.float32)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        return np.asarray((np.nanmax(around, axis=0) - median) / rms, dtype=np.float64)


def _above(
    score: np.ndarray,
    peak: np.ndarray,
    raw: np.ndarray,
    median: float,
    rms: float,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and S/N of a tile's peaks whose S/N ``(score - median) / rms`` reaches
    ``threshold`` on valid input. Why not the S/N map: few pixels come near the threshold, so
    a comparison of the raw score against a bound a little below it picks the candidates in
    one pass, and the S/N (the same float32 arithmetic as over the whole map) and validity
    are then computed at those pixels only."""
    bound = median + threshold * rms
    ys, xs = np.nonzero((score >= bound - 1e-4 * (abs(bound) + rms)) & (peak > 0.5))
    snr = (score[ys, xs] - median) / rms
    keep = (snr >= threshold) & np.isfinite(raw[ys, xs])
    return ys[keep], xs[keep], snr[keep]


def _any_finite(data: np.ndarray, rows: int = 256) -> bool:
    """Whether any pixel is valid, reading a band of rows at a time (no whole-image copy)."""
    return any(np.isfinite(data[y : y + rows]).any() for y in range(0, data.shape[0], rows))


def _core_values(spec: TileSpec, raw: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The scores of the tile's core (the pixels it owns) where the input was valid."""
    rows = slice(spec.core_y0 - spec.y0, spec.core_y1 - spec.y0)
    cols = slice(spec.core_x0 - spec.x0, spec.core_x1 - spec.x0)
    return np.asarray(score[rows, cols][np.isfinite(raw[rows, cols])])


def _robust_stats(pool: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate(pool) if pool else np.array([])
    if values.size < 16:
        raise JobFailure("too few valid pixels to estimate the noise of the image")
    median = float(np.median(values))
    rms = float(MAD_TO_SIGMA * np.median(np.abs(values - median)))
    if not rms > 0:
        raise JobFailure(
            "the image has no noise to measure (constant pixel values); a matched filter "
            "cannot set a threshold on it"
        )
    return median, rms


@dataclass
class _Prepared:
    """One job of a batch between its stages."""

    request: AppRequest
    image: SkyImage
    chain: FittedChain
    specs: list[TileSpec]
    threshold: float
    full_shape: tuple[int, int]
    #: The pixels tiles are cut from: the image's, or their block means (``factor`` > 1)
    pixels: np.ndarray
    factor: int = 1
    min_snr: float | None = None
    #: MIN_SNR reads the brightest pixel within this many pixels of a candidate
    peak_radius: int = 1
    median: float = 0.0
    rms: float = 1.0
    per_tile: list[tuple[TileSpec, list[Detection]]] = field(default_factory=list)
    #: stats measured in the detection pass itself: candidates wait for the rms
    deferred: bool = False
    pool: list[np.ndarray] = field(default_factory=list)
    candidates: list[tuple[TileSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    #: tiles of the detection pass done so far (for progress reports)
    tiles_done: int = 0
    #: the region of interest asked (None: the whole image) and its pixels; ``image`` is
    #: then the region with its margin, which is searched
    region: Region | None = None
    region_image: SkyImage | None = None


def _mad_rms(pixels: np.ndarray, max_samples: int = 1_000_000) -> float | None:
    """1.4826 x the MAD of the finite pixels (a regular subsample of at most about
    ``max_samples``), or None when there are none or they are all equal."""
    step = max(1, math.ceil(math.sqrt(pixels.size / max_samples)))
    values = np.asarray(pixels[::step, ::step], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    rms = MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))
    return rms if rms > 0 else None


def ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises when a forward pass fails. An allocation failure comes as
    ``Fail`` (its BFC arena: "Failed to allocate memory") or ``RuntimeException`` (a kernel's
    ``std::bad_alloc``; CUDA's out-of-memory errors), depending on where it happened."""
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail, Fail, RuntimeException

    return (Fail, RuntimeException, EPFail)


#: Lower-case fragments of ONNX Runtime's messages for an allocation that failed.
_OOM_MESSAGES = (
    "failed to allocate",
    "bad_alloc",
    "out of memory",
    "alloc_failed",  # CUDNN_STATUS_ALLOC_FAILED
    "memoryallocation",  # cudaErrorMemoryAllocation
)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(m in text for m in _OOM_MESSAGES)


def _flux_unit(image: SkyImage) -> str:
    unit = (image.bunit or "").strip()
    return "Jy/beam" if not unit or unit.upper() == "JY/BEAM" else unit
