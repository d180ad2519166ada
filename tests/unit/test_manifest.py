"""Model manifests: the shipped one loads, bad ones fail naming file and field, files are
checked by sha256, and the declared parameters become the service's ParamSpecs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from astro_otf.domain.errors import ParameterError
from astro_otf.domain.parameters import ParamSpec, validate
from astro_otf.models.manifest import (
    SHIPPED_MODELS,
    LoadedModel,
    ManifestError,
    ModelFileError,
    load_manifest,
    load_manifests,
    read_verified,
    sha256_of,
    verify,
)

SHIPPED = SHIPPED_MODELS / "matched-filter" / "1.0"


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A copy of the shipped model folder, laid out as <id>/<version>, to spoil at will."""
    folder = tmp_path / "zoo" / "matched-filter" / "1.0"
    shutil.copytree(SHIPPED, folder)
    return folder


def _edit(folder: Path, old: str, new: str) -> Path:
    path = folder / "manifest.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def test_shipped_manifest_loads() -> None:
    models = load_manifests(SHIPPED_MODELS)
    by_key = {(m.model_id, m.version): m for m in models}
    model = by_key[("matched-filter", "1.0")]
    m = model.manifest
    assert m.framework == "onnx"
    assert m.precisions == ["fp32", "fp16"]
    assert m.default_precision == "fp32"
    assert m.input.name == "image"
    assert (m.input.tile, m.input.channels, m.input.layout) == (256, 1, "NCHW")
    assert m.input.dtype == {"fp32": "float32", "fp16": "float32"}
    assert (m.tiling.tile, m.tiling.overlap) == (256, 32)
    assert m.normalisation == [{"op": "nan", "value": 0.0}]
    assert m.output.kind == "heatmap"
    assert (m.output.score, m.output.peak, m.output.stride) == ("score", "peak", 1)
    assert m.output.score_normalisation == "median_mad"
    assert "rms of the score map" in m.description
    assert m.postprocess.score_threshold == 5.0
    assert m.memory_mb > 0
    assert model.path == SHIPPED_MODELS / "matched-filter" / "1.0" / "manifest.toml"
    for precision in m.precisions:
        assert model.file(precision).is_file()
        assert model.verify(precision) == model.file(precision)


def test_precision_choice() -> None:
    model = load_manifest(SHIPPED / "manifest.toml")
    assert model.precision(None) == "fp32"
    assert model.file() == model.files["fp32"]
    with pytest.raises(ValueError, match="offers precisions fp32, fp16, not 'int8'"):
        model.precision("int8")


def test_parameter_schema_becomes_paramspec() -> None:
    model = load_manifest(SHIPPED / "manifest.toml")
    (spec,) = model.manifest.parameter_specs()
    assert isinstance(spec, ParamSpec)
    assert (spec.name, spec.type, spec.default, spec.unit) == ("threshold", "float", 5.0, "sigma")
    assert (spec.minimum, spec.maximum) == (1.0, 1000.0)
    assert spec.parse("7") == 7.0
    with pytest.raises(ParameterError, match=r"THRESHOLD: 0\.5 is below the minimum 1 sigma"):
        spec.parse("0.5")
    checked = validate(
        {"threshold": "6.5", "precision": "fp16"},
        ["image"],
        model.manifest.parameter_specs(),
        precisions=tuple(model.manifest.precisions),
        model_id=model.model_id,
    )
    assert checked.values["threshold"] == 6.5
    assert checked.values["precision"] == "fp16"
    defaults = validate(
        {},
        ["image"],
        model.manifest.parameter_specs(),
        precisions=tuple(model.manifest.precisions),
        model_id=model.model_id,
    )
    assert defaults.values["threshold"] == 5.0
    assert defaults.values["precision"] == "fp32"


def test_all_parameter_types(model_copy: Path) -> None:
    path = _edit(
        model_copy,
        "[provenance]",
        "[[parameters]]\n"
        'name = "max_sources"\ntype = "int"\ndefault = 100\nminimum = 1\n'
        'description = "Most sources kept."\n\n'
        "[[parameters]]\n"
        'name = "mode"\ntype = "str"\ndefault = "peak"\nallowed = ["peak", "island"]\n'
        'description = "What a source is."\n\n'
        "[[parameters]]\n"
        'name = "deblend"\ntype = "bool"\ndefault = false\ndescription = "Split blends."\n\n'
        "[provenance]",
    )
    specs = {s.name: s for s in load_manifest(path).manifest.parameter_specs()}
    assert specs["max_sources"].default == 100
    assert specs["max_sources"].parse("12") == 12
    assert specs["mode"].allowed == ("peak", "island")
    assert specs["mode"].parse("ISLAND") == "island"
    assert specs["deblend"].default is False
    assert specs["deblend"].parse("yes") is True


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        ('framework = "onnx"', 'framework = "torch"', "framework", "'onnx'"),
        ('sha256 = "', 'sha256 = "zz', "files.fp32.sha256", "64 hexadecimal digits"),
        ('precisions = ["fp32", "fp16"]', 'precisions = ["fp32", "bf16"]', "precisions[1]", ""),
        ('precisions = ["fp32", "fp16"]', 'precisions = ["fp32", "fp32"]', "precisions", "twice"),
        ('precisions = ["fp32", "fp16"]', 'precisions = ["fp32"]', "files.fp16", "not in"),
        ('name = "threshold"', 'name = "Threshold"', "parameters[0].name", "lower case"),
        ('name = "threshold"', 'name = "model"', "parameters[0].name", "every job takes"),
        ('type = "float"', 'type = "complex"', "parameters[0].type", ""),
        ("default = 5.0", "default = 0.5", "parameters[0]", "below the minimum"),
        ("default = 5.0", 'default = "five"', "parameters[0]", "not of type float"),
        ('op = "nan"', 'kind = "nan"', "normalisation", "no 'op'"),
        ("overlap = 32", "overlap = 200", "tiling", "less than half the tile"),
        ("tile = 256\noverlap", "tile = 512\noverlap", "(top level)", "tiling.tile (512)"),
        (
            'dtype = { fp32 = "float32", fp16 = "float32" }',
            'dtype = { fp32 = "float32" }',
            "(top level)",
            "input.dtype.fp16 is missing",
        ),
        ('kind = "heatmap"', 'kind = "boxes"', "output.kind", ""),
        (
            'channels = ["snr"]',
            'channels = ["snr"]\nattributes = "attrs"',
            "output",
            "given together",
        ),
        ("beam_fwhm_pix", "max_beam_pix = -2\nbeam_fwhm_pix", "input.max_beam_pix", "greater"),
        (
            "beam_fwhm_pix",
            "size_multiple = 24\nbeam_fwhm_pix",
            "input.tile",
            "must be a multiple of input.size_multiple (24)",
        ),
        ("beam_fwhm_pix", "size_multiple = 0\nbeam_fwhm_pix", "input.size_multiple", "greater"),
        ("memory_mb = 16", "memory_mb = 0", "memory_mb", "greater than 0"),
        ('version = "1.0"', "version = 1.0", "version", "valid string"),
        ('id = "matched-filter"', 'id = "Matched Filter"', "id", "not a model id"),
        ("framework", "colour = 3\nframework", "colour", "Extra inputs"),
        (
            'path = "matched_filter.fp32.onnx"',
            'path = "gone.onnx"',
            "files.fp32.path",
            "does not exist",
        ),
        (
            'path = "matched_filter.fp32.onnx"',
            'path = "../../x.onnx"',
            "files.fp32.path",
            "inside the manifest's folder",
        ),
    ],
)
def test_bad_manifest_names_file_and_field(
    model_copy: Path, old: str, new: str, field: str, problem: str
) -> None:
    path = _edit(model_copy, old, new)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"model manifest {path}: ")
    assert f"{field}: " in message or f"{field} " in message, message
    assert problem in message
    assert caught.value.path == path


def test_missing_field_and_bad_toml(model_copy: Path) -> None:
    path = model_copy / "manifest.toml"
    text = path.read_text()
    kept = [line for line in text.splitlines() if not line.startswith("description")]
    path.write_text("\n".join(kept) + "\n")
    with pytest.raises(ManifestError, match=r"description: Field required"):
        load_manifest(path)
    path.write_text(text + "\nthis is not toml\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(model_copy / "absent.toml")


def test_folders_must_be_id_and_version(tmp_path: Path) -> None:
    wrong = tmp_path / "zoo" / "matched-filter" / "2.0"
    shutil.copytree(SHIPPED, wrong)
    with pytest.raises(
        ManifestError, match=r"2\.0/manifest\.toml: id/version: .*matched-filter/1\.0"
    ):
        load_manifests(tmp_path / "zoo")
    with pytest.raises(FileNotFoundError):
        load_manifests(tmp_path / "nowhere")


def test_load_manifests_finds_each_version(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    for version in ("1.0", "1.1"):
        shutil.copytree(SHIPPED, root / "matched-filter" / version)
        _edit(root / "matched-filter" / version, 'version = "1.0"', f'version = "{version}"')
    (root / "README.md").write_text("not a model\n")
    models = load_manifests(root)
    assert [(m.model_id, m.version) for m in models] == [
        ("matched-filter", "1.0"),
        ("matched-filter", "1.1"),
    ]
    assert all(isinstance(m, LoadedModel) for m in models)
    assert models[1].files["fp32"] == root / "matched-filter" / "1.1" / "matched_filter.fp32.onnx"


def test_sha256_mismatch_detected_on_tampered_copy(model_copy: Path) -> None:
    model = load_manifest(model_copy / "manifest.toml")
    target = model.file("fp32")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    load_manifest(model_copy / "manifest.toml")  # loading does not hash
    expected = model.sha256("fp32")
    with pytest.raises(
        ModelFileError, match=rf"{target}: sha256 is [0-9a-f]{{64}} but its manifest"
    ):
        verify(target, expected)
    with pytest.raises(ModelFileError, match="damaged or was replaced"):
        model.verify("fp32")
    with pytest.raises(ModelFileError, match="sha256"):
        read_verified(target, expected)
    assert model.verify("fp16") == model.file("fp16")
    target.unlink()
    with pytest.raises(ModelFileError, match="does not exist"):
        verify(target, expected)
    with pytest.raises(ModelFileError, match="does not exist"):
        read_verified(target, expected)


def test_sha256_of_reads_in_chunks(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    data = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    blob.write_bytes(data)
    assert sha256_of(blob) == hashlib.sha256(data).hexdigest()
    verify(blob, hashlib.sha256(data).hexdigest().upper())
    assert read_verified(blob, hashlib.sha256(data).hexdigest()) == data
