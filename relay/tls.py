"""The relay's TLS certificate: one server :class:`ssl.SSLContext` for the listener, reloadable in place.

The listener is given :attr:`ServerCertificate.context` once, at start. :meth:`ServerCertificate.reload`
re-reads the certificate and key files into that same context: handshakes after it present the
new certificate, connections already open keep theirs (TLS never re-keys them with a new
certificate). A new pair is first loaded into a scratch context, so a bad file (unreadable,
not PEM, a key that does not match, an encrypted key) leaves the live context as it was and
raises :class:`~accord.engine.errors.AccordError` naming the problem.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

from accord.engine.errors import AccordError

log = logging.getLogger(__name__)
PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


class _EncryptedKey(Exception):
    """The key file asks for a password (OpenSSL would otherwise prompt on the terminal)."""


def _no_password() -> str:
    raise _EncryptedKey


class ServerCertificate:
    """The certificate and key a TLS relay presents.

    Args:
        cert_path: PEM certificate chain (the relay's certificate first, then intermediates).
        key_path: PEM private key, unencrypted.

    Raises:
        AccordError: the pair cannot be loaded; the message names the file and the problem.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.fingerprint = self._load(self.context)

    def reload(self) -> str:
        """Re-read the files into the live context; return the new certificate's SHA-256 fingerprint.

        Raises:
            AccordError: the new files cannot be loaded; the live context keeps the old certificate.
        """
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        fingerprint = self._load(scratch)  # a bad pair stops here, before the live context is touched
        self._load(self.context)
        self.fingerprint = fingerprint
        return fingerprint

    def _load(self, context: ssl.SSLContext) -> str:
        cert, key = self.cert_path, self.key_path
        try:
            context.load_cert_chain(cert, key, password=_no_password)
            pem = cert.read_text(encoding="ascii", errors="replace")
        except _EncryptedKey:
            raise AccordError(f"TLS key {key} is encrypted; give the relay an unencrypted key file "
                              "(readable by the relay's user only)") from None
        except ssl.SSLError as exc:
            raise AccordError(f"cannot load TLS certificate {cert} with key {key}: {exc.reason or exc.strerror}; "
                              "both must be PEM files and the key must belong to the certificate") from None
        except OSError as exc:
            raise AccordError(f"cannot read TLS certificate {cert} or key {key}: {exc.strerror or exc}") from None
        return fingerprint_of(pem)


def fingerprint_of(pem: str) -> str:
    """SHA-256 of the first certificate in ``pem`` (hex), as ``openssl x509 -fingerprint -sha256`` shows it
    without the colons: names a certificate in logs without showing anything secret."""
    start = pem.find(PEM_CERT_BEGIN)
    if start < 0:
        return ""
    end = pem.find("-----END CERTIFICATE-----", start)
    block = pem[start:end + len("-----END CERTIFICATE-----")]
    try:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(block)).hexdigest()
    except ValueError:
        return ""
