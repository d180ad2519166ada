"""One Settings object for the whole service.

Values come from a TOML file (its path in ``OTF_CONFIG``) and are overridden by ``OTF_*``
environment variables, so that operators can keep a file and scripts can change one value
without editing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: The model a job runs when it names none: the trained detector shipped in the model zoo.
DEFAULT_MODEL = "radio-detector"


#: A dataset's name: what IMAGE=dataset:<name>/... and /datasets/<name> are spelt with.
DATASET_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class DatasetConfig(BaseModel):
    """One dataset an operator offers: images on the server's disk that jobs name instead of
    uploading them (see :mod:`astro_otf.service.datasets`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{DATASET_NAME}$", description="URL-safe name.")
    path: str = Field(
        min_length=1, description="A folder, or a glob of files (absolute or relative)."
    )
    description: str = ""


class Settings(BaseSettings):
    """Everything an operator may set. Field names are the TOML keys; ``OTF_`` + name is the
    environment variable (``OTF_DATA_DIR``, ``OTF_DATABASE_URL``, ``OTF_EXECUTOR``, ...)."""

    model_config = SettingsConfigDict(env_prefix="OTF_", extra="forbid", validate_default=True)

    data_dir: Path = Field(default=Path("data"), description="Job folders and the SQLite file.")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL (secret: it may hold the database's password). Default: "
        "SQLite file otf.sqlite3 in data_dir.",
    )
    base_url: str | None = Field(
        default=None,
        description="Public URL of the service, used in Location headers and result links. "
        "Default: taken from each request.",
    )
    executor: Literal["local", "dask"] = Field(
        default="local",
        description='Where batches run: "local" worker processes, or a Dask cluster '
        "(dask_address).",
    )
    workers: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Worker processes of the local executor; with Dask, the most batches in "
        "flight at once.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Address of the Dask scheduler (tcp://host:8786), for executor = dask. "
        "Server and Dask workers must share data_dir.",
    )
    dask_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Dask worker resources each batch asks for, e.g. {GPU = 1}. A batch that no "
        "connected worker can satisfy fails with a clear error instead of hanging.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="Largest upload, in bytes; a gzip, bzip2 or xz upload is inflated under the "
        "same limit.",
    )
    max_image_pixels: int = Field(
        default=2**30,
        ge=4,
        description="Largest image an upload may declare, in pixels (its axes multiplied; "
        "ZNAXISn for a tile-compressed image). Checked from the header at upload: 413 above it.",
    )
    max_form_bytes: int = Field(
        default=1024**2,
        ge=1024,
        description="Most bytes of a request's text fields together (form-encoded or multipart, "
        "file parts aside), held in memory while a request is read: 413 above it.",
    )
    default_execution_duration: int = Field(default=3600, ge=1, description="Seconds.")
    max_execution_duration: int = Field(default=86400, ge=1, description="Seconds; a cap.")
    default_destruction_days: float = Field(default=7.0, gt=0)
    max_destruction_days: float = Field(default=30.0, gt=0)
    upload_days: float = Field(
        default=7.0, gt=0, description="Days a stored upload (POST /uploads) is kept."
    )
    upload_quota_bytes: int = Field(
        default=20 * 1024**3,
        ge=1,
        description="Bytes of stored uploads one owner may hold at once (POST /uploads).",
    )
    datasets: list[DatasetConfig] = Field(
        default_factory=list,
        description="Folders of images on the server that jobs name as IMAGE=dataset:<name>/"
        "<path>: each {name, path, description}; path is a folder (its FITS files, "
        'recursively) or a glob such as "/data/askap/*.fits".',
    )
    pending_hold_seconds: int = Field(
        default=86400,
        ge=1,
        description="How long a job waits for an upload to come (IMAGE=pending:<name>) when "
        "it gives no HOLD; never past its destruction time.",
    )
    webhook_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a job's NOTIFY webhook may call (none: webhooks are off). A "
        "webhook to any other host is refused when the job is created.",
    )
    max_active_jobs: int = Field(
        default=0,
        ge=0,
        description="Jobs one owner may have QUEUED, EXECUTING or HELD at once; a RUN beyond "
        "it is refused with 429 and Retry-After. 0: no limit. In anonymous mode every caller "
        "is the same owner.",
    )
    max_stored_bytes: int = Field(
        default=0,
        ge=0,
        description="Bytes one owner's jobs may hold (their input images and result files); "
        "a new job beyond it is refused with 413 until jobs are deleted. 0: no limit.",
    )
    job_creation_rate: float = Field(
        default=0.0,
        ge=0,
        description="Jobs one owner may create per minute, on average (a token bucket, per "
        "server process); beyond it 429 with Retry-After. 0: no limit.",
    )
    job_creation_burst: int = Field(
        default=10,
        ge=1,
        description="Jobs one owner may create at once before job_creation_rate applies.",
    )
    max_wait: int = Field(default=600, ge=1, description="Cap on a blocking WAIT, seconds.")
    max_queued_jobs: int = Field(default=10000, ge=1, description="QUEUED jobs before 503.")
    auth_mode: Literal["anonymous", "token", "oidc"] = Field(
        default="anonymous",
        description='Who is asking: "anonymous" (no owners), "token" (bearer tokens from '
        '[tokens]) or "oidc" (bearer JWTs of an OpenID Connect provider: the oidc_* settings).',
    )
    tokens: dict[SecretStr, str] = Field(
        default_factory=dict,
        description="Bearer token -> owner, used in token mode (secret: a token never shows "
        "in a repr or a log).",
    )
    operators: list[str] = Field(
        default_factory=list,
        description="Owners (token mode) who see and manage every owner's jobs and see "
        "everyone's accounting.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OIDC mode: the provider's issuer, exactly as tokens carry it in 'iss' "
        "(https://idp.example.org/realms/astro).",
    )
    oidc_audience: str | None = Field(
        default=None,
        description="OIDC mode: the audience ('aud') a token must be for: this service's "
        "client id at the provider.",
    )
    oidc_jwks_url: str | None = Field(
        default=None,
        description="OIDC mode: the provider's jwks_uri (https; http only on this host), "
        "fetched and cached; fetched again when a token names a key id it lacks.",
    )
    oidc_jwks_file: Path | None = Field(
        default=None,
        description="OIDC mode, instead of oidc_jwks_url: a JWKS file, read again when it changes.",
    )
    oidc_owner_claim: str = Field(
        default="preferred_username",
        min_length=1,
        description="OIDC mode: the token claim that names the owner (preferred_username, "
        "sub, email ...).",
    )
    oidc_groups_claim: str = Field(
        default="groups",
        min_length=1,
        description="OIDC mode: the claim that lists the user's groups (a dotted path such "
        "as realm_access.roles reaches into an object).",
    )
    oidc_operator_group: str | None = Field(
        default=None,
        description="OIDC mode: members of this group are operators, who see and manage "
        "every owner's jobs (none: no operators).",
    )
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        min_length=1,
        description="OIDC mode: the signature algorithms accepted (public-key ones only: "
        "RS*, PS*, ES*, EdDSA; never none or HS*).",
    )
    oidc_leeway: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="OIDC mode: seconds of clock difference allowed on exp, nbf and iat.",
    )
    oidc_jwks_refresh_interval: float = Field(
        default=60.0,
        ge=0,
        description="OIDC mode: at most one fetch of oidc_jwks_url per this many seconds, "
        "however many tokens name unknown key ids.",
    )
    oidc_jwks_max_age: float = Field(
        default=3600.0,
        gt=0,
        description="OIDC mode: seconds a fetched key set is used before it is fetched "
        "again (so that a key the provider removed stops working).",
    )
    models_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders of model manifests (<id>/<version>/manifest.toml) served besides "
        "the models shipped with the package.",
    )
    apps_dir: Path = Field(
        default=Path(".apps"),
        description="Where the command apps' Python environments are (one folder each, "
        "built by `make apps`); relative to the working directory unless absolute. An app "
        "whose environment is missing is listed as unavailable.",
    )
    inference_providers: list[str] = Field(
        default_factory=lambda: ["cpu"],
        description='ONNX Runtime providers in order of preference: "cuda", "tensorrt", "cpu". '
        "A provider that is not available is skipped with a warning.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per worker; 0: cores / workers."
    )
    session_memory_mb: int = Field(
        default=2048, ge=16, description="Memory budget of the warm model sessions per worker."
    )
    max_batch_tiles: int = Field(
        default=32, ge=1, le=4096, description="Most tiles in one forward pass."
    )
    batch_max_jobs: int = Field(default=64, ge=1, description="Most jobs in one batch.")
    batch_max_tiles: int = Field(
        default=512, ge=1, description="Most tiles in one batch (of all its jobs)."
    )
    batch_max_wait: float = Field(
        default=0.2,
        ge=0,
        description="Seconds a job may wait for others to share its batch, only while no "
        "worker is free (a free worker takes queued jobs at once).",
    )
    default_model: str = Field(
        default=DEFAULT_MODEL,
        description="The model a job runs when it names no MODEL.",
    )
    diagnostic_apps: bool = Field(
        default=False,
        description="Also register the 'sleep' app, which does no science: it lets an operator "
        "check queueing, abort and time limits end to end.",
    )
    log_level: str = "info"
    log_file_bytes: int = Field(
        default=50 * 1024**2,
        ge=1024,
        description="data_dir/logs/server.log is rotated at this size.",
    )
    log_files: int = Field(
        default=5, ge=0, description="Rotated server logs kept (server.log.1 ...)."
    )

    @field_validator("data_dir", "apps_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _oidc_needs_a_provider(self) -> Settings:
        if self.auth_mode != "oidc":
            return self
        from astro_otf.uws.oidc import check_settings

        check_settings(self)
        return self

    @model_validator(mode="after")
    def _dask_needs_an_address(self) -> Settings:
        if self.executor == "dask" and not self.dask_address:
            raise ValueError(
                "executor = dask needs dask_address (OTF_DASK_ADDRESS), the Dask scheduler's "
                "address such as tcp://10.0.0.5:8786"
            )
        return self

    @field_validator("datasets")
    @classmethod
    def _unique_dataset_names(cls, v: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"dataset name(s) given twice: {', '.join(twice)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where values come from, first wins: arguments, ``OTF_*`` variables, then the TOML
        file ``OTF_CONFIG`` names (no .env file, no secrets folder)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """The database's SQLAlchemy URL (with its password): ``database_url``, or the SQLite
        file in ``data_dir``."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'otf.sqlite3'}"

    def redacted(self) -> dict[str, Any]:
        """The settings without secrets, for logs and /health."""
        out = self.model_dump(mode="json")
        out["tokens"] = f"<{len(self.tokens)} tokens>"
        return out


def config_path() -> Path | None:
    """The TOML file in force: the one ``OTF_CONFIG`` names (it must exist), else none."""
    env = os.environ.get("OTF_CONFIG")
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"OTF_CONFIG names {path}, which is not a file")
    return path
