"""OpenID Connect (``auth_mode = "oidc"``): a bearer JWT of the identity provider names the
owner, so that a site's single sign-on (Keycloak, Authentik, INDIGO IAM ...) is the login.

A token is accepted when its signature verifies with one of the provider's public keys
(its JWKS), its issuer and audience are the configured ones and it is within its validity
(``exp``, ``nbf``, ``iat``, with ``oidc_leeway`` seconds of clock difference). The owner is
the ``oidc_owner_claim`` claim; a member of ``oidc_operator_group`` (listed in the
``oidc_groups_claim`` claim) is a :class:`~astro_otf.domain.job.Operator`. Every refusal says
what is wrong in words a user can act on (expired when, wrong audience: expected what ...).

Keys come from the provider's ``jwks_uri`` (``oidc_jwks_url``) or a JWKS file
(``oidc_jwks_file``). A fetched key set is kept; it is fetched again when a token names a
key id that it lacks (the provider rotated its keys) or when it is older than
``oidc_jwks_max_age``, never more than once per ``oidc_jwks_refresh_interval`` seconds, so
that a flood of made-up key ids costs the provider one request per interval. A file is read
again when it changes. Checking a token (:meth:`OidcVerifier.verify`) does no I/O: the keys
are brought up to date before, off the event loop (:meth:`OidcVerifier.prepare`, called by
:class:`OidcKeysMiddleware` for each request that carries a token). When the provider cannot
be reached and no key at hand verifies a token, the answer is 503 (try again later), not 401:
the token may well be good.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jwt
from jwt import exceptions as jwt_errors
from jwt.algorithms import get_default_algorithms
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from astro_otf.domain.errors import InvalidToken, ServiceBusy
from astro_otf.domain.job import Operator
from astro_otf.service.threads import in_thread

if TYPE_CHECKING:
    from astro_otf.config import Settings

__all__ = [
    "FileKeys",
    "OidcKeysMiddleware",
    "OidcRules",
    "OidcVerifier",
    "UrlKeys",
    "check_settings",
]

log = logging.getLogger(__name__)

#: Signature algorithms a setting may name: public-key ones only. ``none`` would accept any
#: token, and an HMAC algorithm would take the provider's public key as its shared secret.
PUBLIC_KEY_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "ES256K",
        "EdDSA",
    }
)
#: The curve each ECDSA algorithm signs with (a key on another curve cannot be its key).
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}
#: Seconds one fetch of the provider's keys may take.
FETCH_TIMEOUT_S = 10.0
#: The largest JWKS document read from the provider.
MAX_JWKS_BYTES = 1024**2
#: A JWS in compact form: three base64url parts (the signature's may be empty).
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: How many verified tokens are remembered (see OidcVerifier._verified).
VERIFIED_TOKENS = 1024
#: The longest owner name (the store's owner column).
MAX_OWNER_CHARS = 255


def check_settings(settings: Settings) -> None:
    """Refuse (ValueError naming the setting) an OIDC configuration that cannot work."""
    missing = [name for name in ("oidc_issuer", "oidc_audience") if not getattr(settings, name)]
    if missing:
        raise ValueError(
            f'auth_mode = "oidc" needs {" and ".join(missing)} '
            f"({', '.join('OTF_' + m.upper() for m in missing)}): the provider's issuer as "
            "tokens carry it in 'iss', and this service's client id, which tokens carry in 'aud'"
        )
    if bool(settings.oidc_jwks_url) == bool(settings.oidc_jwks_file):
        raise ValueError(
            'auth_mode = "oidc" needs exactly one of oidc_jwks_url (the provider\'s jwks_uri, '
            "OTF_OIDC_JWKS_URL) and oidc_jwks_file (a JWKS file, OTF_OIDC_JWKS_FILE)"
        )
    if settings.oidc_jwks_url:
        check_jwks_url(settings.oidc_jwks_url)
    if settings.oidc_jwks_file and not Path(settings.oidc_jwks_file).expanduser().is_file():
        raise ValueError(f"oidc_jwks_file names {settings.oidc_jwks_file}, which is not a file")
    wrong = [a for a in settings.oidc_algorithms if a not in PUBLIC_KEY_ALGORITHMS]
    if wrong:
        raise ValueError(
            f"oidc_algorithms: {', '.join(wrong)} cannot be accepted (only public-key "
            f"algorithms: {', '.join(sorted(PUBLIC_KEY_ALGORITHMS))}; never none or HS*)"
        )


def check_jwks_url(url: str) -> None:
    """The keys decide who may log in: they are fetched over https, or http on this host."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return
    raise ValueError(f"oidc_jwks_url must be an https URL (http only for this host), not {url!r}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


# -- key sources --------------------------------------------------------------------------------


class KeysUnavailable(Exception):
    """The provider's keys could not be read (its message says why)."""


def parse_jwks(data: bytes, where: str) -> list[dict[str, Any]]:
    """The signing keys of a JWKS document (keys for encryption only are left out)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KeysUnavailable(f"{where} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysUnavailable(f"{where} is not a JWKS document (an object with a 'keys' list)")
    return [
        key
        for key in doc["keys"]
        if isinstance(key, dict)
        and isinstance(key.get("kty"), str)
        and key.get("use", "sig") == "sig"
    ]


class UrlKeys:
    """The provider's jwks_uri, fetched with httpx."""

    def __init__(self, url: str) -> None:
        check_jwks_url(url)
        self.url = url
        self.fetches = 0

    def describe(self) -> str:
        """Where the keys come from, for messages."""
        return self.url

    def load(self) -> list[dict[str, Any]]:
        """Fetch the key set (bounded in time and size); KeysUnavailable says why not."""
        self.fetches += 1
        try:
            with (
                httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
                client.stream("GET", self.url, headers={"Accept": "application/json"}) as r,
            ):
                if r.status_code != 200:
                    raise KeysUnavailable(f"{self.url} answered HTTP {r.status_code}")
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeysUnavailable(f"{self.url} sent over {MAX_JWKS_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"{self.url} could not be reached: {exc}") from None
        return parse_jwks(bytes(body), self.url)


class FileKeys:
    """A JWKS file, read again whenever it changes (its mtime, size or inode)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def describe(self) -> str:
        """Where the keys come from, for messages."""
        return str(self.path)

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file does (mtime, size, inode); None while it is missing."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> list[dict[str, Any]]:
        """Read the key set; KeysUnavailable says why not."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise KeysUnavailable(f"{self.path} cannot be read: {exc.strerror}") from None
        return parse_jwks(data, str(self.path))


# -- the verifier ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcRules:
    """What a token must be (from the settings)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    owner_claim: str = "preferred_username"
    groups_claim: str = "groups"
    operator_group: str | None = None
    leeway: float = 30.0
    refresh_interval: float = 60.0
    max_age: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcRules:
        """The rules the ``oidc_*`` settings give."""
        assert settings.oidc_issuer and settings.oidc_audience  # checked by Settings
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            algorithms=tuple(settings.oidc_algorithms),
            owner_claim=settings.oidc_owner_claim,
            groups_claim=settings.oidc_groups_claim,
            operator_group=settings.oidc_operator_group,
            leeway=settings.oidc_leeway,
            refresh_interval=settings.oidc_jwks_refresh_interval,
            max_age=settings.oidc_jwks_max_age,
        )


class OidcVerifier:
    """Checks bearer JWTs against the provider's keys and says whom they name."""

    def __init__(self, rules: OidcRules, source: UrlKeys | FileKeys) -> None:
        bad = [a for a in rules.algorithms if a not in PUBLIC_KEY_ALGORITHMS]
        if bad:
            raise ValueError(f"oidc_algorithms: {', '.join(bad)} cannot be accepted")
        self.rules = rules
        self.source = source
        self._keys: list[dict[str, Any]] = []
        #: Keys ready for an algorithm, by (the JWK as canonical JSON, algorithm): by content,
        #: so a refresh in another thread never mixes up keys.
        self._key_objects: dict[tuple[str, str], Any] = {}
        self._loaded = False  # keys were read at least once
        self._attempted_at: float | None = None  # monotonic time of the last read
        self._loaded_at = 0.0  # ... of the last read that worked
        self._stamp: tuple[int, int, int] | None = None  # the file's, when last read
        self._error: str | None = None  # why the last read failed
        #: Tokens verified already: token -> (owner, exp). A client sends the same token
        #: with every request; checking it again costs some 0.2 ms of the event loop (most
        #: of it PyJWT's parsing). Emptied whenever the provider's keys change.
        self._verified: dict[str, tuple[str, float]] = {}
        self._thread_lock = threading.Lock()
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier:
        """A verifier of the configured provider's tokens; a JWKS file is read now (a broken
        one stops the start), a JWKS URL when the first token comes."""
        source: UrlKeys | FileKeys
        if settings.oidc_jwks_url:
            source = UrlKeys(settings.oidc_jwks_url)
        else:
            assert settings.oidc_jwks_file is not None  # checked by Settings
            source = FileKeys(settings.oidc_jwks_file)
        verifier = cls(OidcRules.from_settings(settings), source)
        if isinstance(source, FileKeys):
            verifier.refresh()  # a local file: a broken one stops the start, named
            if verifier._error:
                raise ValueError(f"oidc_jwks_file: {verifier._error}")
        return verifier

    # -- keys ------------------------------------------------------------------------------

    def wants_refresh(self, kid: str | None) -> bool:
        """Whether the keys should be read again before a token with key id ``kid`` is
        checked."""
        if self._attempted_at is None:
            return True
        if isinstance(self.source, FileKeys):
            return self.source.stamp() != self._stamp  # read again once it changed
        now = time.monotonic()
        if now - self._attempted_at < self.rules.refresh_interval:
            return False  # however many unknown key ids come, one fetch per interval
        if self._error is not None or not self._keys:
            return True
        if kid is not None and not any(k.get("kid") == kid for k in self._keys):
            return True
        return now - self._loaded_at > self.rules.max_age

    def refresh(self) -> None:
        """Read the keys (blocking: call it in a thread from async code). A failure keeps
        the keys at hand and is remembered for :meth:`verify`'s answer."""
        with self._thread_lock:
            self._attempted_at = time.monotonic()
            stamp = self.source.stamp() if isinstance(self.source, FileKeys) else None
            self._stamp = stamp  # a broken file is read again only once it changes
            try:
                keys = self.source.load()
            except KeysUnavailable as exc:
                if self._error != str(exc):
                    log.warning("the OIDC provider's keys could not be read: %s", exc)
                self._error = str(exc)
                return
            if keys != self._keys:
                log.info(
                    "OIDC keys from %s: %s",
                    self.source.describe(),
                    ", ".join(str(k.get("kid", "(no kid)")) for k in keys) or "none",
                )
                self._key_objects = {}  # withdrawn keys' objects go
                self._verified = {}  # ... and the tokens they verified are checked again
            self._keys = keys
            self._loaded = True
            self._loaded_at = time.monotonic()
            self._error = None

    async def prepare(self, token: str) -> None:
        """Bring the keys up to date for ``token`` (in a thread, one read at a time)."""
        if not self._needs_refresh(token):
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._needs_refresh(token):  # another request may have just read them
                await in_thread(self.refresh)

    async def authenticate(self, token: str) -> str:
        """:meth:`prepare`, then :meth:`verify`."""
        await self.prepare(token)
        return self.verify(token)

    def verify_blocking(self, token: str) -> str:
        """:meth:`verify` after reading the keys in this thread if needed (for callers that
        are not on the event loop: tools and tests)."""
        if self._needs_refresh(token):
            self.refresh()
        return self.verify(token)

    def _needs_refresh(self, token: str) -> bool:
        """Whether the keys should be read before ``token`` is checked: never for a token
        refused without them (not a JWT, unsigned, an algorithm not accepted)."""
        try:
            header = _header(token)
        except ValueError:
            return False
        if header.get("alg") not in self.rules.algorithms:
            return False
        kid = header.get("kid")
        return self.wants_refresh(kid if isinstance(kid, str) else None)

    # -- tokens -------------------------------------------------------------------------------

    def verify(self, token: str) -> str:
        """The owner ``token`` names (an :class:`Operator` for a member of the operators'
        group). Raises InvalidToken (401) saying why a token is refused, or ServiceBusy (503)
        when the provider's keys cannot be read and none at hand verifies it. No I/O."""
        known = self._verified.get(token)
        if known is not None:
            owner, exp = known
            if time.time() <= exp + self.rules.leeway:
                return owner
            self._verified.pop(token, None)  # expired since: checked again, said why
        try:
            header = _header(token)
        except ValueError as exc:
            raise InvalidToken(f"the bearer token is not a well-formed JWT ({exc})") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken(
                "the bearer token is unsigned (alg none): this service accepts only tokens "
                "signed by the identity provider"
            )
        if alg not in self.rules.algorithms:
            raise InvalidToken(
                f"the bearer token is signed with {_shown(alg)}, which this service does not "
                f"accept (oidc_algorithms: {', '.join(self.rules.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the bearer token's key id (kid) is not a string")
        keys = self._candidates(alg, kid)
        if not keys:
            self._no_key(alg, kid)
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.rules.audience,
                    issuer=self.rules.issuer,
                    leeway=self.rules.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt_errors.InvalidSignatureError:
                continue
            except jwt_errors.PyJWTError as exc:
                raise InvalidToken(self._reason(exc, token)) from None
        if claims is None:
            if self._error is not None:
                raise self._busy()
            raise InvalidToken(
                "the bearer token's signature does not verify with the identity provider's "
                f"keys ({self.source.describe()}): it was not issued by {self.rules.issuer}, "
                "or it was altered"
            )
        owner = self._owner(claims)
        verified = self._verified
        verified[token] = (owner, float(claims["exp"]))
        if len(verified) > VERIFIED_TOKENS:
            verified.pop(next(iter(verified)), None)  # the oldest
        return owner

    def _candidates(self, alg: str, kid: str | None) -> list[Any]:
        """The keys at hand that may have signed a token with ``alg`` and ``kid``."""
        found = []
        for jwk in self._keys:
            if kid is not None and jwk.get("kid") != kid:
                continue
            if "alg" in jwk and jwk["alg"] != alg:
                continue
            key = self._key_object(jwk, alg)
            if key is not None:
                found.append(key)
        return found

    def _key_object(self, jwk: Mapping[str, Any], alg: str) -> Any:
        name = (json.dumps(jwk, sort_keys=True), alg)
        cached = self._key_objects.get(name)
        if cached is not None:
            return cached
        kty = jwk.get("kty")
        if alg.startswith(("RS", "PS")) and kty != "RSA":
            return None
        if alg in EC_CURVES and (kty != "EC" or jwk.get("crv") != EC_CURVES[alg]):
            return None
        if alg == "EdDSA" and kty != "OKP":
            return None
        try:
            key = get_default_algorithms()[alg].from_jwk(dict(jwk))
        except (jwt_errors.PyJWTError, ValueError, KeyError, TypeError):
            return None  # a key this algorithm cannot use
        self._key_objects[name] = key
        return key

    def _no_key(self, alg: str, kid: str | None) -> None:
        if self._error is not None or not self._loaded:
            raise self._busy()
        if kid is not None:
            raise InvalidToken(
                f"the bearer token names signing key {_shown(kid)}, which the identity "
                f"provider's keys ({self.source.describe()}) do not hold, even after reading "
                "them again: it was not issued by this provider, or the key was withdrawn"
            )
        raise InvalidToken(
            f"the bearer token names no key id, and the identity provider's keys hold no {alg} key"
        )

    def _busy(self) -> ServiceBusy:
        retry = 1
        if self._attempted_at is not None and isinstance(self.source, UrlKeys):
            left = self.rules.refresh_interval - (time.monotonic() - self._attempted_at)
            retry = max(1, int(left + 0.999))
        why = self._error or "they have not been read yet"
        return ServiceBusy(
            f"the identity provider's keys cannot be read ({why}), so the bearer token cannot "
            "be checked now; try again later",
            retry_after=retry,
        )

    def _reason(self, exc: jwt_errors.PyJWTError, token: str) -> str:
        """Words for a refusal (the signature has verified when a claim is wrong)."""
        if isinstance(exc, jwt_errors.ExpiredSignatureError):
            exp = _claim(token, "exp")
            when = _time(exp)
            return (
                f"the bearer token expired at {when}" if when else "the bearer token expired"
            ) + ": get a new one from the identity provider (or log in again)"
        if isinstance(exc, jwt_errors.ImmatureSignatureError):
            nbf = _claim(token, "nbf")
            when = _time(nbf)
            return (
                f"the bearer token is not valid yet (not before {when})"
                if when
                else "the bearer token is not valid yet"
            ) + "; check the clocks of this service and of the identity provider"
        if isinstance(exc, jwt_errors.InvalidIssuedAtError):
            return (
                "the bearer token says it was issued in the future (iat); check the clocks of "
                "this service and of the identity provider"
            )
        if isinstance(exc, jwt_errors.InvalidAudienceError):
            return (
                f"the bearer token is for audience {_shown(_claim(token, 'aud'))}, not for this "
                f"service (expected {self.rules.audience!r}): ask the identity provider for a "
                "token for this service's client"
            )
        if isinstance(exc, jwt_errors.InvalidIssuerError):
            return (
                f"the bearer token was issued by {_shown(_claim(token, 'iss'))}, not by this "
                f"service's identity provider (expected issuer {self.rules.issuer!r})"
            )
        if isinstance(exc, jwt_errors.MissingRequiredClaimError):
            return f"the bearer token has no {exc.claim!r} claim, which this service requires"
        if isinstance(exc, jwt_errors.InvalidAlgorithmError):
            return f"the bearer token's algorithm is not accepted: {exc}"
        if isinstance(exc, jwt_errors.DecodeError):
            return f"the bearer token is not a well-formed JWT ({exc})"
        return f"the bearer token is not valid: {exc}"

    def _owner(self, claims: Mapping[str, Any]) -> str:
        name = self.rules.owner_claim
        owner = claims.get(name)
        if not isinstance(owner, str) or not owner.strip():
            raise InvalidToken(
                f"the bearer token has no {name!r} claim (oidc_owner_claim), which names its "
                "owner here: ask the identity provider to include it in this client's tokens"
            )
        if len(owner) > MAX_OWNER_CHARS:
            raise InvalidToken(
                f"the bearer token's {name!r} claim is over {MAX_OWNER_CHARS} characters"
            )
        group = self.rules.operator_group
        if group is not None and group in self._groups(claims):
            return Operator(owner)
        return owner

    def _groups(self, claims: Mapping[str, Any]) -> set[str]:
        """The user's groups: the groups claim (a dotted path), a list of names or one name;
        a group's path (Keycloak's ``/operators``) counts as its name too."""
        value: Any = claims
        for part in self.rules.groups_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        groups = set()
        for name in names:
            if isinstance(name, str):
                groups.add(name)
                groups.add(name.lstrip("/"))
        return groups


def _header(token: str) -> dict[str, Any]:
    """A JWT's header, unverified (ValueError saying why it is not one)."""
    if _JWS.fullmatch(token) is None:
        raise ValueError("a JWT is three base64url parts separated by dots")
    try:
        header = jwt.get_unverified_header(token)
    except jwt_errors.PyJWTError as exc:
        raise ValueError(f"its header cannot be read: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header


def _claim(token: str, name: str) -> Any:
    """A claim of a token whose signature has verified (for the words of a refusal)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get(name)
    except jwt_errors.PyJWTError:
        return None


def _time(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        moment = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    ago = time.time() - value
    rel = f"{_span(ago)} ago" if ago >= 0 else f"in {_span(-ago)}"
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')} ({rel})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _shown(value: Any) -> str:
    """A value from a token, quoted and cut short (it is the sender's text)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the middleware -----------------------------------------------------------------------------


class OidcKeysMiddleware:
    """Before a request that carries a token (the Authorization header or the login cookie)
    reaches its route, brings the provider's keys up to date for it, off the event loop; the
    route then checks the token without I/O (:func:`astro_otf.uws.auth.owner_from`). Nothing
    is refused here: a route that needs no owner never looks at the token."""

    def __init__(self, app: ASGIApp, verifier: OidcVerifier, cookie: str) -> None:
        self.app = app
        self.verifier = verifier
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refresh the keys the request's token needs, then pass the request on."""
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            header = headers.get("authorization")
            token = ""
            if header is not None:
                scheme, _, rest = header.partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
            elif "cookie" in headers:
                token = cookie_parser(headers["cookie"]).get(self.cookie, "").strip()
            if token:
                await self.verifier.prepare(token)
        await self.app(scope, receive, send)
