# -*- test-case-name: tests.test_tls -*-
"""
TLS for relayd's listeners: the server's certificate, key and TLS policy
(versions, cipher suites, key exchange groups) loaded from the C{[tls]}
table, reloadable on C{SIGHUP}; a wrapper that puts implicit TLS on a
protocol factory; and a self-signed development certificate.

The same L{ServerTLS} serves both STARTTLS (RFC 3207, passed to
C{transport.startTLS}) and implicit TLS (RFC 8314 section 3, through
L{implicit_tls_factory}).  Implicit TLS is put on the factory, not in an
C{ssl:} endpoint description, so that a listener behind C{haproxy:} or
C{systemd:} endpoints works the same way.

L{server_context_factory}, L{ServerTLS} and L{ensure_self_signed} do
blocking file I/O: call them at start-up (or on reload), never from a
connection's callbacks.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from relayd.config import ConfigError, TLSConfig

__all__ = [
    "DEVELOPMENT_ORGANIZATION",
    "ServerTLS",
    "ensure_self_signed",
    "implicit_tls_factory",
    "server_context_factory",
]

#: The organisation (O) of the subject of every certificate made by
#: L{ensure_self_signed}, so that nobody mistakes one for a real certificate.
DEVELOPMENT_ORGANIZATION = "relayd development certificate - not for production"

#: How long a generated development certificate is valid.
_DEVELOPMENT_VALIDITY = datetime.timedelta(days=365)

#: The private key types OpenSSL can use for a server certificate.
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)

log = Logger()

#: C{[tls] minimum_version} to the Twisted constant.
_MINIMUM_VERSIONS = {
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
}


def _read(setting: str, path: str) -> bytes:
    """
    Read a whole file for C{setting}.

    @param setting: The dotted configuration key that names the file, for
        messages (C{"tls.certificate"}).
    @type setting: L{str}
    @param path: File-system path.
    @type path: L{str}
    @return: The file's bytes.
    @rtype: L{bytes}
    @raise ConfigError: When the file is missing or cannot be read.
    """
    if not path:
        raise ConfigError(f"{setting}: required setting is missing")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{setting}: {path}: cannot be read: {e.strerror or e}") from None


def _public_bytes(key: object) -> bytes:
    """
    Serialize a public key so that two keys can be compared.

    @param key: A public key from L{cryptography}.
    @return: Its DER SubjectPublicKeyInfo.
    @rtype: L{bytes}
    """
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _tls12_ciphers(names: tuple[str, ...]) -> str:
    """
    Check the TLS 1.2 entries of C{[tls] ciphers} and join them into an
    OpenSSL cipher string.

    Each entry must select at least one cipher suite OpenSSL knows (OpenSSL
    itself silently skips unknown names in a list).  Entries that start
    with C{!}, C{-}, C{+} or C{@} modify the list and are not checked
    alone.  DHE suites are refused: relayd sets no Diffie-Hellman
    parameters, so OpenSSL would never choose them.

    @param names: The entries that do not start with C{TLS_}.
    @type names: L{tuple} of L{str}
    @return: The cipher string for C{SSL_CTX_set_cipher_list}.
    @rtype: L{str}
    @raise ConfigError: Naming C{tls.ciphers} and the entry.
    """
    for name in names:
        if name[:1] in ("!", "-", "+", "@"):
            continue
        scratch = SSL.Context(SSL.TLS_METHOD)
        try:
            scratch.set_cipher_list(name.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError):
            raise ConfigError(
                f"tls.ciphers: {name!r}: not a cipher suite known to OpenSSL"
            ) from None
        scratch.set_tls13_ciphersuites(b"")
        for selected in SSL.Connection(scratch).get_cipher_list():
            if selected.startswith(("DHE-", "EDH-")):
                raise ConfigError(
                    f"tls.ciphers: {name!r}: DHE suites need Diffie-Hellman parameters,"
                    " which relayd does not set; use the ECDHE suites"
                )
    return ":".join(names)


def _tls13_ciphersuites(names: tuple[str, ...]) -> str:
    """
    Check the TLS 1.3 entries of C{[tls] ciphers} (the names that start
    with C{TLS_}) and join them for C{SSL_CTX_set_ciphersuites}.

    @param names: The TLS 1.3 entries.
    @type names: L{tuple} of L{str}
    @rtype: L{str}
    @raise ConfigError: Naming C{tls.ciphers} and an entry OpenSSL does not
        know.
    """
    for name in names:
        try:
            SSL.Context(SSL.TLS_METHOD).set_tls13_ciphersuites(name.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError):
            raise ConfigError(
                f"tls.ciphers: {name!r}: not a TLS 1.3 cipher suite known to OpenSSL"
            ) from None
    return ":".join(names)


def _set_groups(context: SSL.Context, groups: tuple[str, ...]) -> None:
    """
    Offer only C{groups} for the (EC)DHE key exchange (RFC 8446 section
    4.2.7, RFC 8422 section 5.1.1).

    pyOpenSSL has no public call for the group list
    (C{SSL_CTX_set1_groups_list}); its binding of the same function under
    its older name, C{SSL_CTX_set1_curves_list}, is used.

    @param context: A context no connection has been made from yet.
    @type context: L{SSL.Context}
    @param groups: OpenSSL group names (C{X25519}, C{prime256v1}, C{P-384}).
    @type groups: L{tuple} of L{str}
    @raise ConfigError: Naming C{tls.groups} and the entry OpenSSL refused.
    """
    if not groups:
        raise ConfigError("tls.groups: at least one group is needed")
    for name in groups:
        scratch = SSL.Context(SSL.TLS_METHOD)
        if not name.isascii() or name in ("", "?") or ":" in name:
            accepted = 0
        else:
            accepted = _openssl.SSL_CTX_set1_curves_list(scratch._context, name.encode("ascii"))
        if accepted != 1:
            _openssl.ERR_clear_error()
            raise ConfigError(f"tls.groups: {name!r}: not a group known to OpenSSL")
    joined = ":".join(groups).encode("ascii")
    if _openssl.SSL_CTX_set1_curves_list(context._context, joined) != 1:  # pragma: no cover
        _openssl.ERR_clear_error()
        raise ConfigError("tls.groups: OpenSSL refused the list")


def _apply_policy(context: SSL.Context, config: TLSConfig) -> None:
    """
    Put the cipher suites and groups of C{config} on C{context}.

    @param context: A context no connection has been made from yet.
    @type context: L{SSL.Context}
    @param config: The C{[tls]} table.
    @type config: L{TLSConfig}
    @raise ConfigError: A name OpenSSL does not know, or no cipher suite
        left for a TLS version the daemon offers.
    """
    tls13 = tuple(c for c in config.ciphers if c.startswith("TLS_"))
    tls12 = tuple(c for c in config.ciphers if not c.startswith("TLS_"))
    if not tls13:
        raise ConfigError("tls.ciphers: no TLS 1.3 cipher suite (names that start with TLS_)")
    if not tls12 and config.minimum_version == "1.2":
        raise ConfigError(
            'tls.ciphers: no TLS 1.2 cipher suite; add one or set tls.minimum_version = "1.3"'
        )
    context.set_tls13_ciphersuites(_tls13_ciphersuites(tls13).encode("ascii"))
    if tls12:
        context.set_cipher_list(_tls12_ciphers(tls12).encode("ascii"))
    _set_groups(context, config.groups)


def server_context_factory(config: TLSConfig) -> CertificateOptions:
    """
    Build the server's TLS settings from the C{[tls]} table.

    The certificate file holds the PEM chain, leaf first; the certificates
    after the leaf are sent as the rest of the chain.  The key file holds
    one unencrypted PEM private key (PKCS#8 or traditional), which must be
    the leaf certificate's key.  TLS versions below
    C{config.minimum_version} are refused (RFC 8996 deprecates TLS 1.0 and
    1.1; RFC 8314 section 4.1 asks for at least TLS 1.2).  Only the cipher
    suites of C{config.ciphers} and the groups of C{config.groups} are
    offered; the client's order of preference is followed, as Mozilla's
    intermediate profile says.

    @param config: The C{[tls]} table.
    @type config: L{TLSConfig}
    @return: Settings usable as an C{IOpenSSLServerConnectionCreator} (for
        L{implicit_tls_factory}) and by C{ITLSTransport.startTLS} (for
        STARTTLS).
    @rtype: L{CertificateOptions}
    @raise ConfigError: When a file is missing, unreadable or not PEM, the
        key is encrypted or does not belong to the certificate, the
        minimum version is unknown, or a cipher suite or group is unknown
        to OpenSSL.  The one-line message names the
        setting and the file, for example
        C{"tls.certificate: /etc/relayd/cert.pem: no such file"}.
    """
    minimum = _minimum_version(config)
    chain, key = _load_pair(config)
    # Certificates and keys from cryptography, not pyOpenSSL's deprecated
    # X509 and PKey: Twisted only hands them to pyOpenSSL's Context, which
    # takes either.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=minimum,
    )
    # The context is cached by CertificateOptions and no connection has
    # been made from it yet, so it can still be changed.
    _apply_policy(_built_context(options, config), config)
    return options


def _minimum_version(config: TLSConfig) -> TLSVersion:
    """
    The lowest TLS version of C{[tls] minimum_version}.

    @param config: The C{[tls]} table.
    @type config: L{TLSConfig}
    @rtype: L{TLSVersion}
    @raise ConfigError: Naming C{tls.minimum_version} when it is unknown.
    """
    try:
        minimum: TLSVersion = _MINIMUM_VERSIONS[config.minimum_version]
    except KeyError:
        raise ConfigError(
            "tls.minimum_version: expected one of " + ", ".join(repr(v) for v in _MINIMUM_VERSIONS)
        ) from None
    return minimum


def _parse_chain(certificate_pem: bytes, config: TLSConfig) -> list[x509.Certificate]:
    """
    Parse the PEM certificate chain of C{[tls] certificate}, leaf first.

    @param certificate_pem: The file's bytes.
    @type certificate_pem: L{bytes}
    @param config: The C{[tls]} table, for the message.
    @type config: L{TLSConfig}
    @return: At least one certificate.
    @rtype: L{list} of L{x509.Certificate}
    @raise ConfigError: Naming C{tls.certificate} and the file when it
        holds no PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificates(certificate_pem)
    except ValueError:
        raise ConfigError(
            f"tls.certificate: {config.certificate}: no PEM certificate found"
        ) from None


def _parse_key(key_pem: bytes, config: TLSConfig) -> PrivateKeyTypes:
    """
    Parse the unencrypted PEM private key of C{[tls] key}.

    @param key_pem: The file's bytes.
    @type key_pem: L{bytes}
    @param config: The C{[tls]} table, for the message.
    @type config: L{TLSConfig}
    @return: A private key from L{cryptography}.
    @raise ConfigError: Naming C{tls.key} and the file when it is
        encrypted or holds no usable PEM private key.
    """
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"tls.key: {config.key}: the key is encrypted; relayd needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"tls.key: {config.key}: no usable PEM private key found") from None


def _load_pair(config: TLSConfig) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """
    Read the certificate chain and its leaf's private key, and check that
    they belong together.

    Both files are read before either is parsed, the certificate first.

    @param config: The C{[tls]} table.
    @type config: L{TLSConfig}
    @return: The chain, leaf first, and the leaf's key (one of
        L{_SERVER_KEY_TYPES}).
    @raise ConfigError: Naming the setting and the file when one is missing
        or unreadable, as L{_parse_chain} and L{_parse_key}, and naming
        C{tls.key} when the key is not the leaf's or of a type OpenSSL
        cannot serve with.
    """
    certificate_pem = _read("tls.certificate", config.certificate)
    key_pem = _read("tls.key", config.key)
    chain = _parse_chain(certificate_pem, config)
    key = _parse_key(key_pem, config)
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        raise ConfigError(
            f"tls.key: {config.key}: does not match the certificate in {config.certificate}"
        )
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise ConfigError(f"tls.key: {config.key}: unsupported key type")
    return chain, key


def _built_context(options: CertificateOptions, config: TLSConfig) -> SSL.Context:
    """
    Build the OpenSSL context of C{options} now, so that anything OpenSSL
    refuses (a key too weak for its security level, say) stops the daemon
    at start-up rather than failing the first handshake.

    @param options: The server's settings, with no connection made yet.
    @type options: L{CertificateOptions}
    @param config: The C{[tls]} table, for the message.
    @type config: L{TLSConfig}
    @return: The context C{options} caches and every connection uses.
    @rtype: L{SSL.Context}
    @raise ConfigError: Naming C{tls.certificate} when OpenSSL refuses the
        certificate or key.
    """
    try:
        return options.getContext()
    except SSL.Error as e:
        raise ConfigError(
            f"tls.certificate: {config.certificate}: OpenSSL refused the certificate or key: {e}"
        ) from None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The server's TLS settings for every listener, re-read on demand: a
    reload swaps the certificate, key and policy for new handshakes, and
    keeps the previous ones when the new files are unusable.  Connections
    already made keep the settings they started with.

    Usable wherever Twisted takes an C{IOpenSSLServerConnectionCreator}:
    C{ITLSTransport.startTLS} (STARTTLS) and L{implicit_tls_factory}.

    @ivar config: The C{[tls]} table whose files are read.
    @type config: L{TLSConfig}
    @ivar options: The settings new handshakes use.
    @type options: L{CertificateOptions}
    """

    def __init__(self, config: TLSConfig) -> None:
        """
        Load the settings once.

        @param config: The C{[tls]} table.
        @type config: L{TLSConfig}
        @raise ConfigError: As L{server_context_factory}.
        """
        self.config = config
        self.options = server_context_factory(config)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        Make the OpenSSL connection of one handshake with the current
        settings.

        @param tlsProtocol: The TLS protocol of the connection.
        @rtype: L{SSL.Connection}
        """
        return self.options.serverConnectionForTLS(tlsProtocol)  # type: ignore[arg-type]

    def reload(self) -> bool:
        """
        Re-read the certificate and key files (C{SIGHUP}).  Logs the
        outcome in one line; never raises.

        @return: C{True} if new handshakes now use the new files, C{False}
            if the files were unusable and the previous settings are kept
            (logged as a warning with the reason).
        @rtype: L{bool}
        """
        try:
            options = server_context_factory(self.config)
        except ConfigError as e:
            log.warn(
                "TLS certificate not reloaded, keeping the previous one: {error}",
                error=str(e),
            )
            return False
        self.options = options
        log.info("TLS certificate reloaded from {path}", path=self.config.certificate)
        return True


def implicit_tls_factory(
    factory: IProtocolFactory, context_factory: ServerTLS | CertificateOptions
) -> IProtocolFactory:
    """
    Wrap C{factory} so that each connection is TLS from its first byte:
    implicit TLS, as on the submissions port 465 (RFC 8314 section 3).

    The wrapped protocols see the decrypted stream; their transport is the
    TLS transport.  The SMTP protocol should be told explicitly that such a
    connection is already secure (it must not offer STARTTLS, and may offer
    AUTH at once); this wrapper does not tell it.

    @param factory: The factory of the application protocol (SMTP).
    @type factory: L{IProtocolFactory}
    @param context_factory: The server's TLS settings, usually a
        L{ServerTLS}.
    @type context_factory: L{ServerTLS}, L{CertificateOptions} or another
        C{IOpenSSLServerConnectionCreator}
    @return: A factory for the listening endpoint.
    @rtype: L{IProtocolFactory}
    """
    return TLSMemoryBIOFactory(context_factory, False, factory)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} through a temporary file in the same folder,
    so that a reader sees either nothing or the whole file.

    @param path: Destination.
    @type path: L{Path}
    @param data: The file's bytes.
    @type data: L{bytes}
    @param mode: Permission bits of the new file (for example C{0o600}).
    @type mode: L{int}
    @raise OSError: When the file cannot be written.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:  # pragma: no cover
            pass
        raise


def _subject_alternative_names(hostname: str) -> list[x509.GeneralName]:
    """
    The SubjectAltName entries of a development certificate: C{hostname},
    C{localhost} and C{127.0.0.1}, without repeats.

    @param hostname: The server's name; an IP address literal is added as
        an IP address entry.
    @type hostname: L{str}
    @rtype: L{list} of L{x509.GeneralName}
    """
    names: list[x509.GeneralName] = []
    for name in (hostname, "localhost", "127.0.0.1"):
        if not name:
            continue
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name.lower())
        if entry not in names:
            names.append(entry)
    return names


def ensure_self_signed(
    certificate: str,
    key: str,
    hostname: str,
    *,
    now: datetime.datetime | None = None,
) -> bool:
    """
    Create a self-signed development certificate and its key at
    C{certificate} and C{key} if either file is missing.

    The key is EC P-256, written with mode C{0600}; the certificate is valid
    for 365 days from C{now}, names C{hostname}, C{localhost} and
    C{127.0.0.1} in its SubjectAltName (RFC 5280 section 4.2.1.6; clients
    check the server's name there, RFC 6125), and says
    L{DEVELOPMENT_ORGANIZATION} as its subject's organisation.  Missing
    parent folders are created.  Both files are replaced when either is
    missing, so that the pair always matches.

    Used by the development configuration (C{[tls] generate_self_signed});
    never in production.

    @param certificate: Path of the PEM certificate to create.
    @type certificate: L{str}
    @param key: Path of the PEM private key to create.
    @type key: L{str}
    @param hostname: The server's name (C{[server] hostname}).
    @type hostname: L{str}
    @param now: The start of the validity period (timezone-aware); the
        current time when C{None}.
    @type now: L{datetime.datetime} or L{None}
    @return: C{True} if the files were created, C{False} if both already
        existed and were left alone.
    @rtype: L{bool}
    @raise ConfigError: When a file or folder cannot be written.
    """
    certificate_path = Path(certificate)
    key_path = Path(key)
    if certificate_path.exists() and key_path.exists():
        return False
    if now is None:
        now = datetime.datetime.now(datetime.UTC)

    private_key = ec.generate_private_key(ec.SECP256R1())
    certificate_pem = _development_certificate(private_key, hostname, now).public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_files(
        (
            ("tls.key", key_path, key_pem, 0o600),
            ("tls.certificate", certificate_path, certificate_pem, 0o644),
        )
    )
    return True


def _development_certificate(
    private_key: ec.EllipticCurvePrivateKey, hostname: str, now: datetime.datetime
) -> x509.Certificate:
    """
    Sign the self-signed development certificate of L{ensure_self_signed}.

    @param private_key: Its key (and the signing key).
    @type private_key: L{ec.EllipticCurvePrivateKey}
    @param hostname: The server's name: the subject's common name when it
        fits (at most 64 characters, RFC 5280 appendix A.1), else
        C{localhost}; and a SubjectAltName entry.
    @type hostname: L{str}
    @param now: The start of the validity period (timezone-aware).
    @type now: L{datetime.datetime}
    @return: The certificate, signed with SHA-256.
    @rtype: L{x509.Certificate}
    """
    common_name = hostname if 0 < len(hostname) <= 64 else "localhost"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEVELOPMENT_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public_key = private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A little slack for clocks that are slightly behind.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _DEVELOPMENT_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(_subject_alternative_names(hostname)),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def _write_files(files: Iterable[tuple[str, Path, bytes, int]]) -> None:
    """
    Write each file atomically (L{_atomic_write}), creating missing parent
    folders.

    @param files: For each file, in order: the setting that names it (for
        messages), its path, its bytes and its permission bits.
    @raise ConfigError: Naming the setting and the path when a file or
        folder cannot be written.
    """
    for setting, path, data, mode in files:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, data, mode)
        except OSError as e:
            raise ConfigError(f"{setting}: {path}: cannot be written: {e.strerror or e}") from None
