"""A throwaway CA and a server certificate for 127.0.0.1, made with openssl.

Clients verify the server against this CA (curl --cacert, the imageio
client's cafile), so TLS rows pay for real verification, not --insecure.
P-256 keys: quick to make, and the key type only changes the handshake,
not the bulk cipher the rows measure.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import BenchError

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    except FileNotFoundError as e:
        raise BenchError("openssl is not installed") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(f"openssl {args[0]} failed: {e.stderr.decode(errors='replace')}") from e


def make_tls(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "server.pem", directory / "server.key"
    csr, ext = directory / "server.csr", directory / "server.ext"
    _openssl("req", "-x509", *CURVE, "-keyout", str(ca_key), "-out", str(ca),
             "-days", "2", "-subj", "/CN=sluice bench throwaway CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-new", *CURVE, "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")
    ext.write_text(SERVER_EXTENSIONS)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return TLSFiles(ca=ca, cert=cert, key=key)
