"""A token endpoint for the registry's token authentication, on 127.0.0.1: JWTs signed with a key of its own,
whose self-signed certificate the registry is configured to trust (`rootcertbundle`)."""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVICE = "storage-audit-registry"
ISSUER = "storage-audit-tests"


def self_signed(common_name: str, loopback: bool = False) -> tuple[Any, Any]:
    """An EC P-256 key and its self-signed certificate (for 127.0.0.1 and localhost too when `loopback`), valid far
    on either side of any test's day."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(9999, 12, 31, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if loopback:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(key, hashes.SHA256())


class TokenServer:
    """Mints a token for whatever scope is asked, to the one user whose password is given (else 401); each token
    lives `lifetime` seconds. Every token it issued is kept in `issued` (the tests look for them in outputs)."""

    def __init__(self, users: dict[str, str], lifetime: int = 300) -> None:
        self.users = users
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.refused = 0
        from cryptography.hazmat.primitives.serialization import Encoding

        self._key, cert = self_signed(ISSUER)
        self._cert = cert.public_bytes(Encoding.DER)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def write_bundle(self, path: Path) -> Path:
        pem = base64.encodebytes(self._cert).decode()
        path.write_text(f"-----BEGIN CERTIFICATE-----\n{pem}-----END CERTIFICATE-----\n", encoding="ascii")
        return path

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def token(self, user: str, scopes: list[str]) -> str:
        import jwt

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())  # the registry checks a token's times against its own clock
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        x5c = [base64.b64encode(self._cert).decode()]
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": x5c})

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                header = self.headers.get("Authorization", "")
                user, _, password = (
                    base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
                    if header.startswith("Basic ")
                    else ("", "", "")
                )
                if not user or server.users.get(user) != password:
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = server.token(user, query.get("scope", []))
                server.issued.append(token)
                body = f'{{"token": "{token}", "expires_in": {server.lifetime}}}'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
