"""A stand-in OpenID Connect provider for the tests: key pairs made here, their public halves
served as a JWKS by a local HTTP server thread, and tokens signed with PyJWT. Nothing
outside this machine is asked."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.org/realms/astro"
AUDIENCE = "astro-otf"


class SigningKey:
    """A key pair of the provider's, with its key id."""

    def __init__(self, kind: str = "RSA", kid: str | None = None) -> None:
        self.kind = kind
        self.kid = kid or f"{kind.lower()}-{uuid.uuid4().hex[:8]}"
        self.private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            doc = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            doc = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**doc, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str | None = None,
        kid: str | bool | None = True,
    ) -> str:
        headers: dict[str, Any] = {}
        if kid is True:
            headers["kid"] = self.kid
        elif isinstance(kid, str):
            headers["kid"] = kid
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


def claims(user: str = "alice", **extra: Any) -> dict[str, Any]:
    """A good token's claims for ``user`` (valid for an hour)."""
    now = int(time.time())
    doc: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"sub-{user}",
        "preferred_username": user,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "groups": [],
    }
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


class JwksServer:
    """Serves ``keys`` at ``url``; ``down`` makes it answer 503; ``fetches`` counts the
    requests it had."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        self.down = False
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                if owner.down or self.path != "/jwks":
                    self.send_response(503 if owner.down else 404)
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwk() for k in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def jwks_document(keys: list[SigningKey]) -> str:
    return json.dumps({"keys": [k.jwk() for k in keys]})
