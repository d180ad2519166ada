"""The OIDC token verifier (astro_otf.uws.oidc) against keys and tokens made here: every way
a token is refused says why, keys follow the provider's rotation, and a provider that is down
gives 503, not 401. The JWKS is served by a local HTTP server thread or read from a file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from astro_otf.config import Settings
from astro_otf.domain.errors import InvalidToken, NotAuthenticated, ServiceBusy
from astro_otf.domain.job import Operator, sees_every_owner
from astro_otf.uws.oidc import FileKeys, OidcRules, OidcVerifier, UrlKeys
from tests.oidc_provider import AUDIENCE, ISSUER, JwksServer, SigningKey, claims, jwks_document


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("RSA", kid="rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("EC", kid="ec-1")


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    """A key of nobody's: same key id as rsa_key, another key pair."""
    return SigningKey("RSA", kid="rsa-1")


@pytest.fixture
def provider(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer([rsa_key, ec_key]) as server:
        yield server


def verifier_for(url: str, **rules: Any) -> OidcVerifier:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "refresh_interval": 0.0}
    options.update(rules)
    return OidcVerifier(OidcRules(**options), UrlKeys(url))


def refused(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        verifier.verify_blocking(token)
    assert info.value.status_code == 401
    return info.value.message


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64(signature)}"


# -- good tokens ---------------------------------------------------------------------------------


def test_good_tokens_name_their_owner(
    provider: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    verifier = verifier_for(provider.url)
    alice = verifier.verify_blocking(rsa_key.sign(claims("alice")))
    assert alice == "alice" and not sees_every_owner(alice)
    assert verifier.verify_blocking(ec_key.sign(claims("bob"))) == "bob"
    # aud may be a list that includes this service
    assert verifier.verify_blocking(rsa_key.sign(claims("carol", aud=["x", AUDIENCE]))) == "carol"
    # a token without kid: the key of its algorithm
    assert verifier.verify_blocking(ec_key.sign(claims("dave"), kid=None)) == "dave"


def test_owner_claim_may_be_sub(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, owner_claim="sub")
    assert verifier.verify_blocking(rsa_key.sign(claims("alice"))) == "sub-alice"


def test_operator_group_makes_an_operator(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, operator_group="otf-operators")
    olga = verifier.verify_blocking(rsa_key.sign(claims("olga", groups=["x", "otf-operators"])))
    assert isinstance(olga, Operator) and olga == "olga" and sees_every_owner(olga)
    # Keycloak's full group path counts as the group
    path = verifier.verify_blocking(rsa_key.sign(claims("olga", groups=["/otf-operators"])))
    assert sees_every_owner(path)
    # not a member, or a group that only contains the name: not an operator
    for groups in (["otf-operators-old"], [], None, "users"):
        owner = verifier.verify_blocking(rsa_key.sign(claims("ursula", groups=groups)))
        assert owner == "ursula" and not sees_every_owner(owner), groups
    # without an operator group nobody is one
    plain = verifier_for(provider.url)
    assert not sees_every_owner(
        plain.verify_blocking(rsa_key.sign(claims("olga", groups=["otf-operators"])))
    )


def test_groups_claim_may_be_a_dotted_path(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(
        provider.url, groups_claim="realm_access.roles", operator_group="otf-admin"
    )
    token = rsa_key.sign(claims("olga", realm_access={"roles": ["otf-admin"]}))
    assert sees_every_owner(verifier.verify_blocking(token))
    assert not sees_every_owner(verifier.verify_blocking(rsa_key.sign(claims("u"))))


# -- bad tokens -----------------------------------------------------------------------------------


def test_expired_token_says_when(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, leeway=30)
    exp = int(time.time()) - 7200
    message = refused(verifier, rsa_key.sign(claims(iat=exp - 3600, nbf=exp - 3600, exp=exp)))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
    assert f"expired at {stamp}" in message and "ago" in message
    # within the leeway it still counts
    assert verifier.verify_blocking(rsa_key.sign(claims(exp=int(time.time()) - 5))) == "alice"


def test_a_remembered_token_still_expires(provider: JwksServer, rsa_key: SigningKey) -> None:
    """Verified tokens are remembered (a client sends the same one again and again), but
    only until they expire."""
    verifier = verifier_for(provider.url, leeway=0)
    token = rsa_key.sign(claims(exp=int(time.time()) + 1))
    assert verifier.verify_blocking(token) == "alice"
    assert verifier.verify_blocking(token) == "alice"
    time.sleep(2.1)
    assert "expired at" in refused(verifier, token)


def test_not_yet_valid_token(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url)
    nbf = int(time.time()) + 3600
    message = refused(verifier, rsa_key.sign(claims(nbf=nbf, exp=nbf + 3600)))
    assert "not valid yet" in message and "clock" in message


def test_wrong_signature(provider: JwksServer, rsa_key: SigningKey, stranger: SigningKey) -> None:
    verifier = verifier_for(provider.url)
    message = refused(verifier, stranger.sign(claims()))  # same kid, another key pair
    assert "signature does not verify" in message and provider.url in message
    # a good token altered after signing
    head, _, sig = rsa_key.sign(claims("alice")).split(".")
    forged = f"{head}.{b64(json.dumps(claims('olga')).encode())}.{sig}"
    assert "signature does not verify" in refused(verifier, forged)


def test_wrong_audience_and_issuer(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url)
    message = refused(verifier, rsa_key.sign(claims(aud="another-app")))
    assert "'another-app'" in message and f"expected {AUDIENCE!r}" in message
    message = refused(verifier, rsa_key.sign(claims(iss="https://evil.example.org")))
    assert "evil.example.org" in message and f"expected issuer {ISSUER!r}" in message
    for claim in ("aud", "iss", "exp"):
        missing: dict[str, Any] = {claim: None}
        message = refused(verifier, rsa_key.sign(claims(**missing)))
        assert f"no {claim!r} claim" in message, claim


def test_unsigned_token_is_refused(provider: JwksServer) -> None:
    verifier = verifier_for(provider.url)
    for alg in ("none", "None", "NONE"):
        token = handmade({"alg": alg, "typ": "JWT"}, claims("olga"))
        message = refused(verifier, token)
        assert "unsigned (alg none)" in message, alg
    assert provider.fetches == 0  # refused before any key was needed


def test_hmac_with_the_public_key_is_refused(provider: JwksServer, rsa_key: SigningKey) -> None:
    """The classic confusion: HS256 signed with the provider's public key as the secret."""
    verifier = verifier_for(provider.url)
    secret = json.dumps(rsa_key.jwk()).encode()
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}
    unsigned = handmade(header, claims("olga")).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    message = refused(verifier, f"{unsigned}.{b64(signature)}")
    assert "signed with 'HS256'" in message and "RS256, ES256" in message


def test_algorithm_not_in_the_list(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, algorithms=("ES256",))
    assert "does not accept" in refused(verifier, rsa_key.sign(claims()))
    # a PS256 token from an RSA key whose JWK says RS256: the key is not for PS256
    both = verifier_for(provider.url, algorithms=("RS256", "PS256"))
    assert "do not hold" in refused(both, rsa_key.sign(claims(), alg="PS256"))


def test_unknown_key_id(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url)
    message = refused(verifier, rsa_key.sign(claims(), kid="no-such-key"))
    assert "'no-such-key'" in message and "even after reading them again" in message


def test_missing_owner_claim(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url)
    for value in (None, "", "  ", 42, ["alice"]):
        message = refused(verifier, rsa_key.sign(claims(preferred_username=value)))
        assert "no 'preferred_username' claim (oidc_owner_claim)" in message, value
    assert "over 255" in refused(verifier, rsa_key.sign(claims("a" * 256)))


def test_malformed_tokens(provider: JwksServer) -> None:
    verifier = verifier_for(provider.url)
    for token in ("abc", "abc.def", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.!!!.x", "x" * 5000):
        assert "not a well-formed JWT" in refused(verifier, token), token
    assert provider.fetches == 0


# -- keys: rotation, rate limit, provider down, file ---------------------------------------------


def test_rotation_new_key_accepted_removed_key_refused(
    provider: JwksServer, rsa_key: SigningKey
) -> None:
    verifier = verifier_for(provider.url)
    old_token = rsa_key.sign(claims("alice"))
    assert verifier.verify_blocking(old_token) == "alice"
    assert provider.fetches == 1
    # The provider rotates: a new key appears, the old one is withdrawn.
    new_key = SigningKey("RSA", kid="rsa-2")
    provider.keys = [new_key]
    assert verifier.verify_blocking(new_key.sign(claims("alice"))) == "alice"  # after refresh
    assert provider.fetches == 2
    assert "'rsa-1'" in refused(verifier, old_token)


def test_max_age_drops_a_withdrawn_key(provider: JwksServer, rsa_key: SigningKey) -> None:
    """A key the provider withdrew stops working once the cached set is read again, even
    when no token names an unknown key."""
    verifier = verifier_for(provider.url, max_age=1e-6)
    token = rsa_key.sign(claims("alice"))
    assert verifier.verify_blocking(token) == "alice"
    provider.keys = [SigningKey("EC", kid="ec-2")]
    assert "'rsa-1'" in refused(verifier, token)


def test_unknown_key_ids_fetch_once_per_interval(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, refresh_interval=3600)
    assert verifier.verify_blocking(rsa_key.sign(claims())) == "alice"
    for n in range(50):
        refused(verifier, rsa_key.sign(claims(), kid=f"made-up-{n}"))
    assert provider.fetches == 1


def test_concurrent_requests_share_one_fetch(provider: JwksServer, rsa_key: SigningKey) -> None:
    verifier = verifier_for(provider.url, refresh_interval=3600)
    token = rsa_key.sign(claims("alice"))

    async def many() -> list[str]:
        return await asyncio.gather(*(verifier.authenticate(token) for _ in range(20)))

    assert asyncio.run(many()) == ["alice"] * 20
    assert provider.fetches == 1


def test_provider_down_is_503_not_401(
    provider: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    provider.down = True
    verifier = verifier_for(provider.url, refresh_interval=0)
    with pytest.raises(ServiceBusy) as info:
        verifier.verify_blocking(rsa_key.sign(claims()))
    assert info.value.status_code == 503 and info.value.retry_after >= 1
    assert "503" in info.value.message and "try again later" in info.value.message
    # It comes back: the keys are read, the token verifies.
    provider.down = False
    assert verifier.verify_blocking(rsa_key.sign(claims())) == "alice"
    # Down again: a cached key still verifies; an unknown key id cannot be checked (503).
    provider.down = True
    assert verifier.verify_blocking(ec_key.sign(claims("bob"))) == "bob"
    with pytest.raises(ServiceBusy):
        verifier.verify_blocking(SigningKey("EC", kid="ec-new").sign(claims()))


def test_unreachable_provider_is_503(rsa_key: SigningKey) -> None:
    with JwksServer([]) as gone:
        url = gone.url
    verifier = verifier_for(url)
    with pytest.raises(ServiceBusy) as info:
        verifier.verify_blocking(rsa_key.sign(claims()))
    assert "could not be reached" in info.value.message


def test_not_a_jwks_is_503(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"no": "keys"}')
    verifier = OidcVerifier(OidcRules(issuer=ISSUER, audience=AUDIENCE), FileKeys(path))
    with pytest.raises(ServiceBusy) as info:
        verifier.verify_blocking(rsa_key.sign(claims()))
    assert "not a JWKS document" in info.value.message


def test_jwks_file_is_read_again_when_it_changes(
    tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks_document([rsa_key]))
    verifier = OidcVerifier(OidcRules(issuer=ISSUER, audience=AUDIENCE), FileKeys(path))
    assert verifier.verify_blocking(rsa_key.sign(claims())) == "alice"
    assert "'ec-1'" in refused(verifier, ec_key.sign(claims()))
    path.write_text(jwks_document([ec_key]))
    stamp = time.time_ns() + 10**9  # a clearly later mtime, whatever the clock's grain
    os.utime(path, ns=(stamp, stamp))
    assert verifier.verify_blocking(ec_key.sign(claims("bob"))) == "bob"
    assert "'rsa-1'" in refused(verifier, rsa_key.sign(claims()))


# -- settings ---------------------------------------------------------------------------------


def oidc_settings(tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "auth_mode": "oidc",
        "oidc_issuer": ISSUER,
        "oidc_audience": AUDIENCE,
        "oidc_jwks_url": "https://idp.example.org/certs",
    }
    base.update(values)
    return Settings(**{k: v for k, v in base.items() if v is not None})


def test_settings_need_issuer_audience_and_one_key_source(tmp_path: Path) -> None:
    assert oidc_settings(tmp_path).oidc_algorithms == ["RS256", "ES256"]
    cases: dict[str, dict[str, Any]] = {
        "oidc_issuer": {"oidc_issuer": None},
        "oidc_audience": {"oidc_audience": None},
        "exactly one of oidc_jwks_url": {"oidc_jwks_url": None},
        "exactly one of": {"oidc_jwks_file": str(tmp_path)},
        "must be an https URL": {"oidc_jwks_url": "http://idp.example.org/certs"},
        "which is not a file": {"oidc_jwks_url": None, "oidc_jwks_file": "/no/such.json"},
        "none cannot be accepted": {"oidc_algorithms": ["RS256", "none"]},
        "HS256 cannot be accepted": {"oidc_algorithms": ["HS256"]},
    }
    for expected, values in cases.items():
        with pytest.raises(ValidationError) as info:
            oidc_settings(tmp_path, **values)
        assert expected in str(info.value), (expected, str(info.value))
    # http is fine on this host (a provider next to the service, and these tests)
    assert oidc_settings(tmp_path, oidc_jwks_url="http://127.0.0.1:8080/certs")
    # the other modes need none of it
    assert Settings(data_dir=tmp_path, auth_mode="token").oidc_issuer is None


def test_broken_jwks_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("not json")
    settings = oidc_settings(tmp_path, oidc_jwks_url=None, oidc_jwks_file=str(path))
    with pytest.raises(ValueError, match=r"oidc_jwks_file: .* is not JSON"):
        OidcVerifier.from_settings(settings)


# -- the challenge -------------------------------------------------------------------------------


def test_bearer_challenge() -> None:
    assert NotAuthenticated("send a token").headers == {"WWW-Authenticate": "Bearer"}
    refused = InvalidToken('the token "x\\y" expired — get a new one')
    challenge = refused.challenge
    assert refused.headers == {"WWW-Authenticate": challenge}
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"')
    inner = description[:-1]
    assert '"' not in inner and "\\" not in inner and inner.isascii()
    assert "expired" in inner
