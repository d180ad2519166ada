"""Parameter validation: every refusal names the parameter and says what is wrong."""

from __future__ import annotations

import pytest

from astro_otf.domain.errors import ParameterError
from astro_otf.domain.parameters import Extent, ParamSpec, roi_from, validate

APP = (
    ParamSpec("thresh", "float", "threshold", default=5.0, minimum=0.5, maximum=1000.0),
    ParamSpec("minarea", "int", "pixels", default=5, minimum=1, maximum=10000),
    ParamSpec("filter", "bool", "smooth", default=True),
    ParamSpec("mode", "str", "mode", default="fast", allowed=("fast", "slow")),
)


def check(raw: dict[str, str], files: tuple[str, ...] = ("image",)):  # type: ignore[no-untyped-def]
    return validate(raw, files, APP, precisions=("fp64", "fp32"), model_id="sep")


def test_defaults_are_filled() -> None:
    out = check({})
    assert out.values["thresh"] == 5.0
    assert out.values["minarea"] == 5
    assert out.values["precision"] == "fp64"
    assert out.values["priority"] == 0
    assert out.stored == {}


def test_values_are_typed_and_normalised() -> None:
    out = check(
        {"thresh": " 3.5 ", "minarea": "7", "filter": "no", "mode": "SLOW", "precision": "FP32"}
    )
    assert out.values == {
        **out.values,
        "thresh": 3.5,
        "minarea": 7,
        "filter": False,
        "mode": "slow",
        "precision": "fp32",
    }
    assert out.stored["mode"] == "slow"
    assert out.stored["precision"] == "fp32"


@pytest.mark.parametrize(
    ("raw", "name", "words"),
    [
        ({"thresh": "abc"}, "thresh", "not a number"),
        ({"thresh": "nan"}, "thresh", "not a finite number"),
        ({"thresh": "0.1"}, "thresh", "below the minimum 0.5"),
        ({"minarea": "2.5"}, "minarea", "not an integer"),
        ({"minarea": "100000"}, "minarea", "above the maximum 10000"),
        ({"filter": "maybe"}, "filter", "not a boolean"),
        ({"mode": "medium"}, "mode", "not one of fast, slow"),
        ({"precision": "int8"}, "precision", "not one of fp64, fp32"),
        ({"bogus": "1"}, "bogus", "unknown parameter"),
        ({"ra": "400", "dec": "0"}, "ra", "above the maximum 360"),
        ({"ra": "10"}, "dec", "required"),
        ({"dec": "10", "width": "5"}, "ra", "required"),
        ({"ra": "10", "dec": "1", "width": "-3"}, "width", "positive"),
        ({"ra": "10", "dec": "1", "width": "12.5"}, "width", "whole number"),
        ({"ra": "10", "dec": "1", "height": "3 parsecs"}, "height", "not a size"),
        ({"priority": "99"}, "priority", "above the maximum"),
        ({"image": "/etc/passwd"}, "image", "must be uploaded as a file"),
    ],
)
def test_refusals_name_the_parameter(raw: dict[str, str], name: str, words: str) -> None:
    with pytest.raises(ParameterError) as info:
        check(raw)
    assert info.value.name == name
    assert info.value.message.startswith(f"{name.upper()}: ")
    assert words in info.value.message


def test_image_is_required() -> None:
    with pytest.raises(ParameterError, match="IMAGE: is required"):
        check({}, files=())


def test_image_optional_for_apps_without_image() -> None:
    out = validate({}, (), (), precisions=(), model_id="sleep", image_required=False)
    assert out.values == {"priority": 0}


def test_precision_refused_when_model_offers_none() -> None:
    with pytest.raises(ParameterError, match="offers no precision"):
        validate(
            {"precision": "fp32"}, (), (), precisions=(), model_id="sleep", image_required=False
        )


def test_only_image_is_a_file() -> None:
    with pytest.raises(ParameterError, match="THRESH: is not a file parameter"):
        check({}, files=("image", "thresh"))


def test_region_of_interest_in_pixels_and_angles() -> None:
    out = check({"ra": "150.1", "dec": "-2.5", "width": "128", "height": "2 arcmin"})
    roi = roi_from(out.values)
    assert roi is not None
    assert (roi.ra, roi.dec) == (150.1, -2.5)
    assert roi.width == Extent(128, "pix") and roi.width.is_pixels
    assert roi.height == Extent(2, "arcmin") and roi.height.arcsec == 120
    assert out.stored["height"] == "2 arcmin"
    assert roi_from({}) is None


def test_describe_lists_the_schema() -> None:
    spec = APP[3].describe()
    assert spec == {
        "name": "mode",
        "type": "str",
        "description": "mode",
        "default": "fast",
        "allowed": ["fast", "slow"],
    }


def test_names_must_be_lower_case() -> None:
    with pytest.raises(ValueError):
        ParamSpec("Thresh", "float", "x")
