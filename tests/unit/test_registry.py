"""The registry holds every installed version of a model: the newest (in natural order) is
the default, a named one is found, an unknown one is a 400 naming MODEL_VERSION."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from astro_otf.domain.errors import ParameterError
from astro_otf.domain.parameters import ParamSpec
from astro_otf.models.base import AppOutput, AppRequest
from astro_otf.models.manifest import SHIPPED_MODELS
from astro_otf.models.registry import Registry, RegistryConfig, build_registry, version_key
from tests.conftest import install_model_version


@dataclass
class FakeApp:
    model_id: str
    version: str
    description: str = "a fake app"
    parameters: tuple[ParamSpec, ...] = ()
    precisions: tuple[str, ...] = ()
    needs_image: bool = True

    def run(self, request: AppRequest) -> AppOutput:
        raise NotImplementedError


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The shipped radio-detector 1.0 plus a copy installed as 2.0."""
    root = tmp_path_factory.mktemp("models")
    install_model_version(root, "2.0")
    return build_registry(RegistryConfig(models_dirs=(str(root),)))


def test_versions_compare_naturally() -> None:
    shuffled = ["1.9", "2.0", "1.0", "1.10", "1.2", "10.0"]
    assert sorted(shuffled, key=version_key, reverse=True) == [
        "10.0", "2.0", "1.10", "1.9", "1.2", "1.0"
    ]  # fmt: skip
    # non-numeric parts compare as text; a number sorts before text at the same place
    assert version_key("1.0b") > version_key("1.0a") > version_key("1.0")
    assert version_key("v2") > version_key("2")


def test_both_versions_are_installed_and_the_newest_is_the_default(
    two_versions: Registry,
) -> None:
    assert two_versions.versions("radio-detector") == ["2.0", "1.0"]
    assert two_versions.get("radio-detector").version == "2.0"
    assert two_versions.get("radio-detector", "1.0").version == "1.0"
    assert two_versions.get("RADIO-DETECTOR", " 2.0 ").version == "2.0"
    # the default model is unchanged by versions
    assert two_versions.default_model_id == "radio-detector"
    assert two_versions.get(None).version == "2.0"
    assert two_versions.get(None, "1.0").version == "1.0"


def test_iteration_yields_every_version_and_defaults_one_per_id(two_versions: Registry) -> None:
    every = [(a.model_id, a.version) for a in two_versions]
    assert ("radio-detector", "1.0") in every and ("radio-detector", "2.0") in every
    assert len(every) == len(set(every))
    per_id = [(a.model_id, a.version) for a in two_versions.defaults()]
    assert [v for m, v in per_id if m == "radio-detector"] == ["2.0"]
    assert len({m for m, _ in per_id}) == len(per_id)


def test_unknown_version_names_model_version_and_the_installed_ones(
    two_versions: Registry,
) -> None:
    with pytest.raises(ParameterError) as caught:
        two_versions.get("radio-detector", "3.0")
    assert caught.value.name == "model_version"
    assert caught.value.message.startswith("MODEL_VERSION: '3.0'")
    assert "installed: 2.0, 1.0" in caught.value.message
    with pytest.raises(ParameterError) as unknown_model:
        two_versions.get("nope", "1.0")
    assert unknown_model.value.name == "model"


def test_describe_lists_the_versions_newest_first(two_versions: Registry) -> None:
    old = two_versions.describe(two_versions.get("radio-detector", "1.0"))
    assert old["version"] == "1.0" and old["versions"] == ["2.0", "1.0"]
    spec = next(p for p in old["parameters"] if p["name"] == "model_version")
    assert spec["allowed"] == ["2.0", "1.0"] and spec["default"] == "2.0"
    sep = two_versions.describe(two_versions.get("sep"))
    assert sep["versions"] == [sep["version"]]


def test_natural_order_picks_1_10_over_1_9() -> None:
    registry = Registry(
        [FakeApp("m", "1.9"), FakeApp("m", "1.10"), FakeApp("m", "1.0"), FakeApp("other", "7")]
    )
    assert registry.default_model_id == "m"
    assert registry.get("m").version == "1.10"
    assert registry.versions("m") == ["1.10", "1.9", "1.0"]
    assert registry.get("m", "1.9").version == "1.9"


def test_the_same_id_and_version_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'m' and version '1\.0'"):
        Registry([FakeApp("m", "1.0"), FakeApp("m", "1.0")])


def test_a_second_install_of_a_shipped_version_is_refused(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_MODELS / "radio-detector" / "1.0", tmp_path / "radio-detector" / "1.0")
    with pytest.raises(ValueError, match=r"share the id 'radio-detector' and version '1\.0'"):
        build_registry(RegistryConfig(models_dirs=(str(tmp_path),)))
