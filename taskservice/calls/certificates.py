"""Who a client certificate stands for: its identities, looked up in MTLS_IDENTITIES.

Under mutual TLS (TLS_CLIENT_CA_FILE) every connection has presented a certificate the CA signed;
MTLS_IDENTITIES names the certificates that are also credentials, by a SPIFFE ID (a URI SAN,
`spiffe://trust-domain/path`) or a DNS SAN, each mapped to a service account's user id. Each edge
hands the peer certificate it has (PEM from grpc's auth context, DER from the HTTP listener) to
`CertificateIdentities.account_of`; what the account may do is then decided exactly as for its
API keys (`AuthService.authenticate_account`).

Only subject alternative names count, never the subject's common name (RFC 6125 and SPIFFE alike).
A certificate whose names map to two different accounts stands for nobody: an ambiguity is a
misconfiguration, not a choice to make silently.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

from cryptography import x509

logger = logging.getLogger(__name__)

#: Distinct certificates whose identities are remembered (parsing one costs tens of microseconds).
PARSED_CERTIFICATES_CACHED = 1024


class CertificateIdentities:
    """MTLS_IDENTITIES: certificate identity → the id of the service account it authenticates."""

    def __init__(self, accounts: Mapping[str, int]) -> None:
        self._accounts = {_normalized(identity): user_id for identity, user_id in accounts.items()}

    def __bool__(self) -> bool:
        return bool(self._accounts)

    def account_of(self, certificate: bytes | None) -> int | None:
        """The account a peer certificate (PEM or DER) maps to; None: unmapped or none sent."""
        if not certificate or not self._accounts:
            return None
        mapped = {
            self._accounts[name] for name in identities_of(certificate) if name in self._accounts
        }
        if len(mapped) > 1:
            logger.warning("a client certificate maps to several accounts; it authenticates none")
            return None
        return next(iter(mapped), None)


@functools.lru_cache(maxsize=PARSED_CERTIFICATES_CACHED)
def identities_of(certificate: bytes) -> tuple[str, ...]:
    """The certificate's URI and DNS subject alternative names, normalized; () if unreadable."""
    try:
        if certificate.lstrip().startswith(b"-----BEGIN"):
            parsed = x509.load_pem_x509_certificate(certificate)
        else:
            parsed = x509.load_der_x509_certificate(certificate)
        names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ()
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    dns = names.get_values_for_type(x509.DNSName)
    return tuple(_normalized(name) for name in (*uris, *dns))


def _normalized(identity: str) -> str:
    """SPIFFE IDs' scheme and trust domain, and DNS names, compare case-insensitively."""
    scheme, separator, rest = identity.partition("://")
    if not separator:
        return identity.lower()
    domain, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{domain.lower()}{slash}{path}"
