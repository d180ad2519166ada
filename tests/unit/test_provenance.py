"""The job provenance writer (astro_otf.results.provenance): ProvDM content, round trips
through PROV-JSON, PROV-XML and PROV-N, content negotiation, atomic writes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import prov
import pytest
from lxml import etree
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvDelegation,
    ProvDerivation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvInfluence,
    ProvRecord,
    ProvUsage,
)

from astro_otf.results.entities import FileEntity
from astro_otf.results.provenance import (
    OTF_SHA256,
    PROV_FORMATS,
    VOPROV,
    DerivedFile,
    ProvenanceRecord,
    ProvenanceUnavailable,
    build_document,
    convert,
    negotiate,
    write_provenance,
)

# Any warning from prov (an identifier PROV-N cannot write, a duplicate key...) is a bug here.
pytestmark = pytest.mark.filterwarnings("error::prov.model.ProvWarning")

STARTED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ENDED = STARTED + timedelta(seconds=7, microseconds=250_000)
IMAGE_BYTES = b"SIMPLE  =                    T" + bytes(range(256)) * 16
MODEL_BYTES = b"\x08\x07onnx-graph" + bytes(1000)
CATALOGUE_BYTES = b"<?xml version='1.0'?><VOTABLE/>"
ODD_NAME = "odd name \"q\" 'x' <&> é ü"
ODD_VALUE = " spaced  value \"q\" 'x' <&> ✓ 東京 "
PROV_XSD = Path(prov.__file__).parent / "tests" / "schemas" / "prov.xsd"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_record(**changes: Any) -> ProvenanceRecord:
    image = FileEntity(
        role="image",
        name="field 7.fits",
        sha256=sha256(IMAGE_BYTES),
        size=len(IMAGE_BYTES),
        mime_type="application/fits",
        attributes={
            "TELESCOP": "ASKAP",
            "BUNIT": "Jy/beam",
            "BMAJ": "0.0033",
            "CTYPE1": "RA---SIN",
            "CRVAL1": "201.365",
            "NAXIS1": "2048",
            "DATE-OBS": "2020-01-12T05:36:03",
        },
    )
    model = FileEntity(
        role="model",
        name="model.onnx",
        sha256=sha256(MODEL_BYTES),
        size=len(MODEL_BYTES),
        mime_type="application/octet-stream",
        attributes={"format": "onnx", "precision": "fp32", "tile_size": "512"},
    )
    catalogue = FileEntity(
        role="result",
        name="catalogue.xml",
        sha256=sha256(CATALOGUE_BYTES),
        size=len(CATALOGUE_BYTES),
        mime_type="application/x-votable+xml",
    )
    record = ProvenanceRecord(
        job_id="5f3a9c0e1b2d4f60",
        owner="alice@example.org",
        model_id="matched-filter",
        model_version="1.2.0",
        started=STARTED,
        ended=ENDED,
        batch_id="a1b2c3d4e5f6",
        batch_jobs=4,
        host="worker-3.example.org",
        pid=31337,
        service_name="astro-otf",
        service_version="0.1.0",
        parameters={"thresh": "5.0", "beam": "true", "roi": "201.3 -43.0 2 arcmin"},
        inputs=[image],
        model_files=[model],
        software={"onnxruntime": "1.23", "astropy": "8.0.2", "sep": "1.4.1"},
        outputs=[catalogue],
    )
    return replace(record, **changes)


def of_type(doc: ProvDocument, cls: type[ProvRecord]) -> list[Any]:
    return list(doc.get_records(cls))


def one(values: set[Any]) -> Any:
    assert len(values) == 1, values
    return next(iter(values))


def attr(record: ProvRecord, name: str) -> Any:
    return one(record.get_attribute(name))


def entity_by_name(doc: ProvDocument, name: str) -> ProvEntity:
    matches = [e for e in of_type(doc, ProvEntity) if e.get_attribute("voprov:name") == {name}]
    assert len(matches) == 1, [str(m) for m in matches]
    return matches[0]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ProvDocument]:
    """The record written by write_provenance, then parsed back from the file."""
    path = tmp_path_factory.mktemp("prov") / "job" / "provenance.json"
    assert write_provenance(make_record(), path) == path
    return path, ProvDocument.deserialize(content=path.read_bytes(), format="json")


# -- content ----------------------------------------------------------------------------------


def test_activity_has_times_batch_and_executor(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    (activity,) = of_type(doc, ProvActivity)
    assert activity.get_startTime() == STARTED
    assert activity.get_endTime() == ENDED
    assert attr(activity, "otf:jobId") == "5f3a9c0e1b2d4f60"
    assert attr(activity, "otf:batchId") == "a1b2c3d4e5f6"
    assert attr(activity, "otf:batchJobs") == 4
    assert attr(activity, "otf:host") == "worker-3.example.org"
    assert attr(activity, "otf:pid") == 31337
    assert str(activity.identifier) == "otf:job-5f3a9c0e1b2d4f60"


def test_model_is_the_activity_description(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    (activity,) = of_type(doc, ProvActivity)
    (influence,) = of_type(doc, ProvInfluence)
    assert attr(influence, "prov:type") == VOPROV["isDescribedBy"]
    assert attr(influence, "prov:influencee") == activity.identifier
    (description,) = doc.get_record(attr(influence, "prov:influencer"))
    assert attr(description, "prov:type") == VOPROV["ActivityDescription"]
    assert attr(description, "voprov:name") == "matched-filter"
    assert attr(description, "voprov:version") == "1.2.0"


def used_by_role(doc: ProvDocument) -> dict[str, list[ProvEntity]]:
    found: dict[str, list[ProvEntity]] = {}
    for usage in of_type(doc, ProvUsage):
        (entity,) = doc.get_record(attr(usage, "prov:entity"))
        found.setdefault(attr(usage, "prov:role"), []).append(entity)
    return found


def test_input_and_model_hashes_on_the_right_entities(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    used = used_by_role(doc)
    (image,) = used["image"]
    (model,) = used["model"]
    assert attr(image, f"otf:{OTF_SHA256}") == sha256(IMAGE_BYTES)
    assert attr(image, "otf:size") == len(IMAGE_BYTES)
    assert attr(image, "voprov:name") == "field 7.fits"
    assert attr(image, "voprov:contentType") == "application/fits"
    assert attr(image, "prov:type") == VOPROV["DatasetEntity"]
    assert attr(image, "otf:meta.CTYPE1") == "RA---SIN"
    assert attr(image, "otf:meta.DATE-OBS") == "2020-01-12T05:36:03"
    assert attr(image, "otf:meta.BUNIT") == "Jy/beam"
    assert attr(model, f"otf:{OTF_SHA256}") == sha256(MODEL_BYTES)
    assert attr(model, "otf:meta.precision") == "fp32"
    assert attr(model, "otf:meta.tile_size") == "512"
    # The raw PROV-JSON holds each hash exactly once, on its own entity.
    path, _ = stored
    text = path.read_text("utf-8")
    assert text.count(sha256(IMAGE_BYTES)) == 1
    assert text.count(sha256(MODEL_BYTES)) == 1


def test_each_parameter_is_a_configuration_entity(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    parameters = {
        attr(e, "voprov:name"): attr(e, "voprov:value") for e in used_by_role(doc)["configuration"]
    }
    assert parameters == make_record().parameters
    for entity in used_by_role(doc)["configuration"]:
        assert attr(entity, "prov:type") == VOPROV["Parameter"]
    for usage in of_type(doc, ProvUsage):
        if attr(usage, "prov:role") == "configuration":
            assert attr(usage, "voprov:artefactType") == "Parameter"


def test_outputs_generated_by_the_job_from_the_image(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    (activity,) = of_type(doc, ProvActivity)
    catalogue = entity_by_name(doc, "catalogue.xml")
    image = entity_by_name(doc, "field 7.fits")
    assert attr(catalogue, f"otf:{OTF_SHA256}") == sha256(CATALOGUE_BYTES)
    (generation,) = of_type(doc, ProvGeneration)
    assert attr(generation, "prov:entity") == catalogue.identifier
    assert attr(generation, "prov:activity") == activity.identifier
    assert attr(generation, "prov:time") == ENDED
    (derivation,) = of_type(doc, ProvDerivation)
    assert attr(derivation, "prov:generatedEntity") == catalogue.identifier
    assert attr(derivation, "prov:usedEntity") == image.identifier
    assert attr(derivation, "prov:activity") == activity.identifier


def test_a_preview_drawn_on_demand_is_named_without_a_hash(tmp_path: Path) -> None:
    preview = DerivedFile(
        "preview",
        "preview.png",
        "image/png",
        derived_from=("catalogue.xml", "not-an-output.json"),
        note="drawn on the first request",
    )
    record = make_record(derived=[preview])
    path = write_provenance(record, tmp_path / "provenance.json")
    doc = ProvDocument.deserialize(content=path.read_text())
    entity = entity_by_name(doc, "preview.png")
    assert attr(entity, "otf:role") == "preview"
    assert attr(entity, "otf:onDemand") == "true"
    assert attr(entity, "voprov:contentType") == "image/png"
    assert not entity.get_attribute(f"otf:{OTF_SHA256}")  # no hash: drawn after the job
    assert not entity.get_attribute("otf:size")
    # generated by no recorded activity; derived from the catalogue and the input image
    generated = {attr(g, "prov:entity") for g in of_type(doc, ProvGeneration)}
    assert entity.identifier not in generated
    parents = {
        attr(d, "prov:usedEntity")
        for d in of_type(doc, ProvDerivation)
        if attr(d, "prov:generatedEntity") == entity.identifier
    }
    catalogue = entity_by_name(doc, "catalogue.xml")
    image = entity_by_name(doc, "field 7.fits")
    assert parents == {catalogue.identifier, image.identifier}
    for fmt in ("xml", "provn"):  # it survives every serialization
        assert "preview.png" in convert(path.read_bytes(), fmt).decode()
    assert ProvDocument.deserialize(content=convert(path.read_bytes(), "xml"), format="xml") == doc


def test_agents_service_and_owner(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    agents = {attr(a, "voprov:name"): a for a in of_type(doc, ProvAgent)}
    service, owner = agents["astro-otf"], agents["alice@example.org"]
    assert attr(service, "prov:type") == prov.constants.PROV["SoftwareAgent"]
    assert attr(service, "otf:version") == "0.1.0"
    assert attr(service, "otf:software.onnxruntime") == "1.23"
    assert attr(service, "otf:software.sep") == "1.4.1"
    assert attr(owner, "prov:type") == prov.constants.PROV["Person"]
    roles = {attr(a, "prov:role"): attr(a, "prov:agent") for a in of_type(doc, ProvAssociation)}
    assert roles == {"operator": service.identifier, "submitter": owner.identifier}
    (delegation,) = of_type(doc, ProvDelegation)
    assert attr(delegation, "prov:delegate") == service.identifier
    assert attr(delegation, "prov:responsible") == owner.identifier


def test_no_owner_gives_an_anonymous_person() -> None:
    doc = build_document(make_record(owner=None))
    persons = [
        a for a in of_type(doc, ProvAgent) if attr(a, "prov:type") == prov.constants.PROV["Person"]
    ]
    assert [attr(a, "voprov:name") for a in persons] == ["anonymous"]
    (submitter,) = [a for a in of_type(doc, ProvAssociation) if attr(a, "prov:role") == "submitter"]
    assert attr(submitter, "prov:agent") == persons[0].identifier


def test_base_url_gives_the_otf_namespace() -> None:
    doc = build_document(make_record(base_url="https://otf.example.org/api/"))
    (activity,) = of_type(doc, ProvActivity)
    assert activity.identifier.uri == "https://otf.example.org/api/job-5f3a9c0e1b2d4f60"
    default = build_document(make_record())
    (activity,) = of_type(default, ProvActivity)
    assert activity.identifier.uri == "urn:astro-otf:job-5f3a9c0e1b2d4f60"


def test_same_file_names_get_distinct_identifiers() -> None:
    image = make_record().inputs[0]
    other = replace(image, sha256=sha256(b"other"), attributes={})
    doc = build_document(make_record(inputs=[image, other]))
    images = used_by_role(doc)["image"]
    assert len({e.identifier for e in images}) == 2
    assert {attr(e, "otf:sha256") for e in images} == {image.sha256, other.sha256}
    # The catalogue derives from both images.
    assert len(of_type(doc, ProvDerivation)) == 2


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        build_document(make_record(started=datetime(2025, 3, 1, 12, 0)))


# -- serializations -----------------------------------------------------------------------------


def test_prov_json_round_trips(stored: tuple[Path, ProvDocument]) -> None:
    _, doc = stored
    assert doc == build_document(make_record())
    again = ProvDocument.deserialize(content=convert(stored[0].read_bytes(), "json"))
    assert again == doc


def test_prov_xml_parses_validates_and_round_trips(stored: tuple[Path, ProvDocument]) -> None:
    path, doc = stored
    xml = convert(path.read_bytes(), "xml")
    root = etree.fromstring(xml)
    assert root.tag == "{http://www.w3.org/ns/prov#}document"
    if PROV_XSD.is_file():  # the PROV-XML schema prov vendors for its own tests
        etree.XMLSchema(etree.parse(str(PROV_XSD))).assertValid(root)
    back = ProvDocument.deserialize(content=xml, format="xml")
    assert len(back.records) == len(doc.records)
    assert back == doc


def test_prov_n_text(stored: tuple[Path, ProvDocument]) -> None:
    path, doc = stored
    provn = convert(path.read_text("utf-8"), "provn").decode("utf-8")
    assert "activity(otf:job-5f3a9c0e1b2d4f60, 2025-03-01T12:00:00+00:00" in provn
    assert "wasGeneratedBy(" in provn
    assert ProvDocument.deserialize(content=provn, format="provn") == doc


def test_odd_parameter_survives_every_serialization() -> None:
    record = make_record(parameters={ODD_NAME: ODD_VALUE, "ctl": "a\x01b"})
    doc = build_document(record)
    text = doc.serialize(format="json")
    assert text is not None
    for fmt in ("json", "xml", "provn"):
        back = ProvDocument.deserialize(content=convert(text, fmt), format=fmt)
        values = {
            attr(e, "voprov:name"): attr(e, "voprov:value")
            for e in used_by_role(back)["configuration"]
        }
        # A character XML cannot hold is written as its \\uXXXX escape.
        assert values == {ODD_NAME: ODD_VALUE, "ctl": "a\\u0001b"}, fmt
        assert back == doc, fmt


def test_svg_needs_graphviz(
    stored: tuple[Path, ProvDocument], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = stored[0].read_bytes()
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(ProvenanceUnavailable, match="Graphviz is not installed"):
        convert(data, "svg")


def test_svg_drawn_where_graphviz_and_prov_dot_are_installed(
    stored: tuple[Path, ProvDocument],
) -> None:
    data = stored[0].read_bytes()
    if shutil.which("dot") is None:
        with pytest.raises(ProvenanceUnavailable, match="Graphviz is not installed"):
            convert(data, "svg")
    elif importlib.util.find_spec("networkx") is None:  # prov.dot imports it
        with pytest.raises(ProvenanceUnavailable, match="networkx"):
            convert(data, "svg")
    else:
        svg = etree.fromstring(convert(data, "svg"))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"


def test_convert_refuses_unknown_format(stored: tuple[Path, ProvDocument]) -> None:
    with pytest.raises(ValueError, match="json, xml, provn, svg"):
        convert(stored[0].read_bytes(), "rdf")


# -- writing ------------------------------------------------------------------------------------


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "provenance.json"
    path.write_text("stale")
    write_provenance(make_record(owner=None), path)
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]
    data = json.loads(path.read_text("utf-8"))
    assert data["prefix"]["voprov"] == "http://www.ivoa.net/documents/ProvenanceDM/ns/voprov/"
    assert "otf:job-5f3a9c0e1b2d4f60" in data["activity"]


def test_failed_build_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "provenance.json"
    with pytest.raises(ValueError):
        write_provenance(make_record(ended=datetime(2025, 3, 1)), path)
    assert list(tmp_path.iterdir()) == []


# -- negotiation --------------------------------------------------------------------------------


def test_formats_and_media_types() -> None:
    assert dict(PROV_FORMATS) == {
        "json": "application/json",
        "xml": "application/xml",
        "provn": "text/provenance-notation",
        "svg": "image/svg+xml",
    }


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("application/x-prov+json", "json"),
        ("application/xml", "xml"),
        ("text/xml", "xml"),
        ("application/x-prov+xml", "xml"),
        ("text/provenance-notation", "provn"),
        ("image/svg+xml", "svg"),
        ("Application/XML; charset=utf-8", "xml"),
        ("image/*", "svg"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "xml"),
        ("text/html, */*;q=0.1", "json"),
        ("application/json;q=0.4, text/provenance-notation;q=0.8", "provn"),
        ("application/json;q=0.8, application/xml;q=0.8", "json"),
        ("application/xml;q=0.8, application/json;q=0.8", "xml"),
        ("text/xml;q=0.1, application/xml;q=0.9, application/json;q=0.5", "xml"),
        ("application/json;q=0, */*", "xml"),
        ("image/svg+xml;q=0.2, */*;q=0.1", "svg"),
        ("text/html", None),
        ("application/json;q=0", None),
        ("text/html, application/pdf;q=0.9", None),
        ("not a media type", None),
    ],
)
def test_negotiate_accept(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_negotiate_explicit_format_wins() -> None:
    assert negotiate("application/json", "provn") == "provn"
    assert negotiate(None, "SVG") == "svg"
    assert negotiate("text/html", "xml") == "xml"
    with pytest.raises(ValueError, match="json, xml, provn, svg"):
        negotiate("application/json", "rdf")
