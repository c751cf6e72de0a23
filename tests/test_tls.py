"""
Tests for L{relayd.tls}: certificates from PEM files, the minimum TLS
version, the cipher suite and group policy, reloading (L{ServerTLS}),
implicit TLS over real loopback connections, and the development
certificate.  The policy on the wire is scanned in
L{tests.test_tls_policy}.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from relayd.config import ConfigError, TLSConfig, parse_config
from relayd.tls import (
    DEVELOPMENT_ORGANIZATION,
    ServerTLS,
    ensure_self_signed,
    implicit_tls_factory,
    server_context_factory,
)

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def _temporary_folder(case: SynchronousTestCase) -> str:
    """
    Make a folder removed when C{case} ends.  (C{TestCase.mktemp} makes
    paths relative to the working folder, which under pytest is the
    project.)
    """
    path = tempfile.mkdtemp(prefix="relayd-test-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def _self_signed(case: SynchronousTestCase, hostname: str = "localhost") -> TLSConfig:
    """
    Make a development certificate and key; return the C{[tls]} table that
    names them.
    """
    folder = _temporary_folder(case)
    config = TLSConfig(
        certificate=os.path.join(folder, "cert.pem"),
        key=os.path.join(folder, "key.pem"),
    )
    ensure_self_signed(config.certificate, config.key, hostname)
    return config


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if password is None:
        encryption = serialization.NoEncryption()
    else:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    """
    Issue a certificate for C{key}; self-signed when C{issuer} is C{None}.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


class _Chain:
    """
    A root CA, an intermediate CA and a leaf for C{localhost}, written as a
    certificate file (leaf, intermediate) and a key file.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _issue("relayd test root", root_key, None, root_key, True)
        intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _issue(
            "relayd test intermediate", intermediate_key, self.root, root_key, True
        )
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _issue("localhost", leaf_key, self.intermediate, intermediate_key, False)
        folder = _temporary_folder(case)
        self.config = TLSConfig(
            certificate=os.path.join(folder, "chain.pem"),
            key=os.path.join(folder, "key.pem"),
        )
        with open(self.config.certificate, "wb") as f:
            f.write(_pem(self.leaf) + _pem(self.intermediate))
        with open(self.config.key, "wb") as f:
            f.write(_key_pem(leaf_key))


def _options(options: CertificateOptions) -> int:
    """
    The option flags of the OpenSSL context of C{options}.  (pyOpenSSL has
    no getter; C{SSL_CTX_set_options} returns the flags it leaves set.)
    """
    return options.getContext().set_options(0)


class ServerContextFactoryTests(SynchronousTestCase):
    """
    Tests for L{server_context_factory}.
    """

    def test_loads_certificate_and_key(self) -> None:
        """
        The leaf certificate and its key are loaded from the PEM files.
        """
        config = _self_signed(self)
        options = server_context_factory(config)
        with open(config.certificate, "rb") as f:
            expected = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(options.certificate, expected)
        self.assertEqual(options.extraCertChain, [])

    def test_chain_after_leaf_is_extra_chain(self) -> None:
        """
        Certificates after the first in the file are sent as the rest of the
        chain, in order.
        """
        chain = _Chain(self)
        options = server_context_factory(chain.config)
        self.assertEqual(options.certificate, chain.leaf)
        self.assertEqual(
            options.extraCertChain,
            [chain.intermediate],
        )

    def test_minimum_version_1_2(self) -> None:
        """
        With C{minimum_version = "1.2"}, TLS 1.0 and 1.1 are disabled and TLS
        1.2 and 1.3 are not.
        """
        config = _self_signed(self)
        options = server_context_factory(config)
        flags = _options(options)
        self.assertTrue(flags & SSL.OP_NO_TLSv1)
        self.assertTrue(flags & SSL.OP_NO_TLSv1_1)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_3)

    def test_minimum_version_1_3(self) -> None:
        """
        With C{minimum_version = "1.3"}, TLS 1.2 is disabled too.
        """
        base = _self_signed(self)
        config = TLSConfig(certificate=base.certificate, key=base.key, minimum_version="1.3")
        flags = _options(server_context_factory(config))
        self.assertTrue(flags & SSL.OP_NO_TLSv1_2)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_3)

    def test_unknown_minimum_version(self) -> None:
        """
        A minimum version other than C{"1.2"} or C{"1.3"} is a L{ConfigError}.
        """
        base = _self_signed(self)
        config = TLSConfig(
            certificate=base.certificate,
            key=base.key,
            minimum_version="1.1",  # type: ignore[arg-type]
        )
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertIn("tls.minimum_version", str(error))

    def test_mismatched_key(self) -> None:
        """
        A key that is not the certificate's is a L{ConfigError} naming the
        key file and the certificate file.
        """
        one = _self_signed(self)
        other = _self_signed(self)
        config = TLSConfig(certificate=one.certificate, key=other.key)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(
            str(error),
            f"tls.key: {other.key}: does not match the certificate in {one.certificate}",
        )

    def test_missing_certificate(self) -> None:
        """
        A missing certificate file is a L{ConfigError} naming the setting and
        the file.
        """
        base = _self_signed(self)
        missing = os.path.join(os.path.dirname(base.certificate), "nope.pem")
        config = TLSConfig(certificate=missing, key=base.key)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(str(error), f"tls.certificate: {missing}: no such file")

    def test_missing_key(self) -> None:
        """
        A missing key file is a L{ConfigError} naming the setting and the
        file.
        """
        base = _self_signed(self)
        missing = os.path.join(os.path.dirname(base.key), "nope.pem")
        config = TLSConfig(certificate=base.certificate, key=missing)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(str(error), f"tls.key: {missing}: no such file")

    def test_unreadable_file(self) -> None:
        """
        A path that cannot be read (here a folder) is a L{ConfigError} that
        says so in one line.
        """
        base = _self_signed(self)
        folder = os.path.dirname(base.certificate)
        config = TLSConfig(certificate=folder, key=base.key)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        message = str(error)
        self.assertTrue(message.startswith(f"tls.certificate: {folder}: cannot be read"))
        self.assertNotIn("\n", message)

    def test_empty_path(self) -> None:
        """
        An empty path is a L{ConfigError}.
        """
        base = _self_signed(self)
        config = TLSConfig(certificate=base.certificate, key="")
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(str(error), "tls.key: required setting is missing")

    def test_not_pem_certificate(self) -> None:
        """
        A certificate file without a PEM certificate is a L{ConfigError}.
        """
        base = _self_signed(self)
        config = TLSConfig(certificate=base.key, key=base.key)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(str(error), f"tls.certificate: {base.key}: no PEM certificate found")

    def test_not_pem_key(self) -> None:
        """
        A key file without a PEM private key is a L{ConfigError}.
        """
        base = _self_signed(self)
        config = TLSConfig(certificate=base.certificate, key=base.certificate)
        error = self.assertRaises(ConfigError, server_context_factory, config)
        self.assertEqual(
            str(error), f"tls.key: {base.certificate}: no usable PEM private key found"
        )

    def test_encrypted_key(self) -> None:
        """
        A passphrase-protected key is a L{ConfigError}: the daemon has no
        way to ask for the passphrase.
        """
        base = _self_signed(self)
        with open(base.key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        with open(base.key, "wb") as f:
            f.write(_key_pem(key, b"secret"))
        error = self.assertRaises(ConfigError, server_context_factory, base)
        self.assertIn("encrypted", str(error))
        self.assertTrue(str(error).startswith(f"tls.key: {base.key}: "))

    def test_combined_file(self) -> None:
        """
        One file holding both the key and the certificate can be named as
        both settings.
        """
        base = _self_signed(self)
        combined = os.path.join(os.path.dirname(base.key), "combined.pem")
        with open(combined, "wb") as out:
            for path in (base.key, base.certificate):
                with open(path, "rb") as f:
                    out.write(f.read())
        server_context_factory(TLSConfig(certificate=combined, key=combined))


def _offered(options: CertificateOptions) -> list[str]:
    """
    The cipher suites a connection made from C{options} offers, TLS 1.3
    first, in OpenSSL's names.
    """
    return [str(c) for c in SSL.Connection(options.getContext()).get_cipher_list()]


class PolicyTests(SynchronousTestCase):
    """
    Tests for the C{[tls] ciphers} and C{groups} settings.
    """

    def _error(self, **settings: Any) -> str:
        base = _self_signed(self)
        config = TLSConfig(certificate=base.certificate, key=base.key, **settings)
        return str(self.assertRaises(ConfigError, server_context_factory, config))

    def test_default_is_mozilla_intermediate(self) -> None:
        """
        By default exactly the suites of Mozilla's intermediate profile
        (without DHE) are offered: the three TLS 1.3 suites, then ECDHE
        with AES-GCM or ChaCha20-Poly1305; no CBC, CCM or RSA key exchange.
        """
        self.assertEqual(
            _offered(server_context_factory(_self_signed(self))),
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ],
        )

    def test_configured_ciphers(self) -> None:
        """
        The configured list replaces the default, TLS 1.3 names and TLS 1.2
        names each going to their own OpenSSL list.
        """
        base = _self_signed(self)
        config = TLSConfig(
            certificate=base.certificate,
            key=base.key,
            ciphers=("ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_AES_256_GCM_SHA384"),
        )
        self.assertEqual(
            _offered(server_context_factory(config)),
            ["TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        )

    def test_unknown_cipher(self) -> None:
        """
        A TLS 1.2 name OpenSSL does not know is a L{ConfigError} naming it,
        even among known ones (OpenSSL alone would skip it silently).
        """
        self.assertEqual(
            self._error(ciphers=("TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "RC5")),
            "tls.ciphers: 'RC5': not a cipher suite known to OpenSSL",
        )

    def test_unknown_tls13_suite(self) -> None:
        """
        An unknown TLS 1.3 name is a L{ConfigError} naming it.
        """
        self.assertEqual(
            self._error(
                ciphers=(
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_AES_512_GCM_SHA1024",
                    "ECDHE-RSA-AES128-GCM-SHA256",
                )
            ),
            "tls.ciphers: 'TLS_AES_512_GCM_SHA1024': not a TLS 1.3 cipher suite known to OpenSSL",
        )

    def test_dhe_refused(self) -> None:
        """
        DHE suites are a L{ConfigError}: relayd sets no DH parameters, so
        OpenSSL would never choose them.
        """
        message = self._error(ciphers=("TLS_AES_128_GCM_SHA256", "DHE-RSA-AES128-GCM-SHA256"))
        self.assertTrue(message.startswith("tls.ciphers: 'DHE-RSA-AES128-GCM-SHA256': DHE"))

    def test_no_tls13_suite(self) -> None:
        """
        A list without a TLS 1.3 suite is a L{ConfigError}.
        """
        self.assertEqual(
            self._error(ciphers=("ECDHE-RSA-AES128-GCM-SHA256",)),
            "tls.ciphers: no TLS 1.3 cipher suite (names that start with TLS_)",
        )

    def test_no_tls12_suite(self) -> None:
        """
        Without a TLS 1.2 suite, C{minimum_version} must be C{"1.3"} (and
        then only the listed TLS 1.3 suites can be negotiated).
        """
        ciphers = ("TLS_AES_128_GCM_SHA256",)
        self.assertTrue(self._error(ciphers=ciphers).startswith("tls.ciphers: no TLS 1.2"))
        base = _self_signed(self)
        config = TLSConfig(
            certificate=base.certificate, key=base.key, ciphers=ciphers, minimum_version="1.3"
        )
        offered = _offered(server_context_factory(config))
        self.assertEqual([c for c in offered if c.startswith("TLS_")], list(ciphers))

    def test_unknown_group(self) -> None:
        """
        A group OpenSSL does not know is a L{ConfigError} naming it.
        """
        self.assertEqual(
            self._error(groups=("X25519", "P-999")),
            "tls.groups: 'P-999': not a group known to OpenSSL",
        )
        self.assertEqual(
            self._error(groups=("X25519:X448",)),
            "tls.groups: 'X25519:X448': not a group known to OpenSSL",
        )

    def test_no_group(self) -> None:
        """
        An empty group list is a L{ConfigError}.
        """
        self.assertEqual(self._error(groups=()), "tls.groups: at least one group is needed")

    def test_toml_types(self) -> None:
        """
        In the file, C{ciphers} and C{groups} are lists of strings.
        """
        base = (
            '[[listeners]]\nendpoint = "tcp:587"\n[auth]\ntokens_file = "t"\n'
            '[tls]\ncertificate = "c"\nkey = "k"\n'
        )
        config = parse_config(base + 'groups = ["X25519"]\nciphers = ["TLS_AES_128_GCM_SHA256"]')
        self.assertEqual(config.tls.groups, ("X25519",))
        self.assertEqual(config.tls.ciphers, ("TLS_AES_128_GCM_SHA256",))
        error = self.assertRaises(ConfigError, parse_config, base + 'ciphers = "HIGH"', "r.toml")
        self.assertEqual(str(error), "r.toml: tls.ciphers: expected a list of strings")


class ServerTLSTests(SynchronousTestCase):
    """
    Tests for L{ServerTLS}: the reloadable settings of every listener.
    """

    def setUp(self) -> None:
        self.config = _self_signed(self)
        self.tls = ServerTLS(self.config)

    def _replace(self) -> None:
        os.unlink(self.config.certificate)
        ensure_self_signed(self.config.certificate, self.config.key, "localhost")

    def test_interface(self) -> None:
        """
        L{ServerTLS} provides C{IOpenSSLServerConnectionCreator}, which both
        C{startTLS} and L{implicit_tls_factory} take.
        """
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, self.tls))

    def test_reload_swaps_certificate(self) -> None:
        """
        After a reload, new connections use the new certificate.
        """
        before = self.tls.options
        self._replace()
        with capturedLogs() as events:
            self.assertTrue(self.tls.reload())
        self.assertIsNot(self.tls.options, before)
        with open(self.config.certificate, "rb") as f:
            self.assertEqual(self.tls.options.certificate, x509.load_pem_x509_certificate(f.read()))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])

    def test_broken_file_keeps_previous(self) -> None:
        """
        When the new files are unusable, the previous settings stay and one
        warning says why.
        """
        before = self.tls.options
        with open(self.config.certificate, "w") as f:
            f.write("garbage\n")
        with capturedLogs() as events:
            self.assertFalse(self.tls.reload())
        self.assertIs(self.tls.options, before)
        (event,) = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            event["error"], f"tls.certificate: {self.config.certificate}: no PEM certificate found"
        )


class EnsureSelfSignedTests(SynchronousTestCase):
    """
    Tests for L{ensure_self_signed}.
    """

    def setUp(self) -> None:
        self.folder = _temporary_folder(self)
        self.certificate = os.path.join(self.folder, "var", "tls", "cert.pem")
        self.key = os.path.join(self.folder, "var", "tls", "key.pem")

    def _load(self) -> x509.Certificate:
        with open(self.certificate, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def test_generates_when_missing(self) -> None:
        """
        When the files are missing, they are created (with their folders) and
        C{True} is returned; the pair loads with L{server_context_factory}.
        """
        self.assertTrue(ensure_self_signed(self.certificate, self.key, "relay.test"))
        server_context_factory(TLSConfig(certificate=self.certificate, key=self.key))

    def test_key_mode_0600(self) -> None:
        """
        The private key is readable by its owner only.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test")
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)

    def test_leaves_existing_files(self) -> None:
        """
        When both files exist, nothing is written and C{False} is returned.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test")
        with open(self.certificate, "rb") as f:
            before = f.read()
        self.assertFalse(ensure_self_signed(self.certificate, self.key, "relay.test"))
        with open(self.certificate, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_regenerates_pair_when_key_missing(self) -> None:
        """
        When only the key is missing, a new matching pair is written.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test")
        first = self._load()
        os.unlink(self.key)
        self.assertTrue(ensure_self_signed(self.certificate, self.key, "relay.test"))
        self.assertNotEqual(self._load(), first)
        server_context_factory(TLSConfig(certificate=self.certificate, key=self.key))

    def test_marked_as_development(self) -> None:
        """
        The subject's organisation says the certificate is for development.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test")
        organisation = self._load().subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        self.assertEqual([a.value for a in organisation], [DEVELOPMENT_ORGANIZATION])

    def test_subject_alternative_names(self) -> None:
        """
        The certificate names the host name, C{localhost} and C{127.0.0.1}.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test")
        san = self._load().extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["relay.test", "localhost"])
        self.assertEqual(
            [str(a) for a in san.value.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1"],
        )

    def test_ip_address_hostname(self) -> None:
        """
        A host name that is an IP address literal becomes an IP address
        entry, and entries are not repeated.
        """
        ensure_self_signed(self.certificate, self.key, "127.0.0.1")
        san = self._load().extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            [str(a) for a in san.value.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1"],
        )

    def test_valid_for_a_year(self) -> None:
        """
        The certificate is valid from (just before) C{now} for 365 days.
        """
        ensure_self_signed(self.certificate, self.key, "relay.test", now=NOW)
        certificate = self._load()
        self.assertTrue(certificate.not_valid_before_utc <= NOW)
        self.assertTrue(NOW - certificate.not_valid_before_utc <= datetime.timedelta(hours=1))
        self.assertEqual(certificate.not_valid_after_utc, NOW + datetime.timedelta(days=365))

    def test_unwritable_folder(self) -> None:
        """
        A folder that cannot be created is a L{ConfigError} naming the file.
        """
        blocker = os.path.join(self.folder, "file")
        with open(blocker, "w"):
            pass
        key = os.path.join(blocker, "key.pem")
        error = self.assertRaises(
            ConfigError,
            ensure_self_signed,
            os.path.join(blocker, "cert.pem"),
            key,
            "relay.test",
        )
        self.assertTrue(str(error).startswith(f"tls.key: {key}: cannot be written"))


class _Echo(Protocol):
    """
    Write back whatever arrives; fire C{lost} when the connection is gone.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class _EchoFactory(Factory):
    """
    Build L{_Echo} protocols and remember them.
    """

    def __init__(self) -> None:
        self.built: list[_Echo] = []

    def buildProtocol(self, addr: Any) -> _Echo:
        protocol = _Echo()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


class _Client(Protocol):
    """
    Send C{message}; when it has come back, note the TLS version and close.

    @ivar done: Fires with C{(echoed bytes, TLS version name)} once the
        connection is closed after the echo, or fails with the reason the
        connection was lost before it.
    """

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.received = b""
        self.version = ""
        self.done: Deferred[tuple[bytes, str]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.message)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.message):
            handle = self.transport.getHandle()  # type: ignore[union-attr]
            self.version = handle.get_protocol_version_name()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.version:
            self.done.callback((self.received, self.version))
        else:
            self.done.errback(reason)


class ImplicitTLSTests(TestCase):
    """
    Real TLS handshakes over 127.0.0.1 through L{implicit_tls_factory}.
    """

    async def _exchange(
        self,
        config: TLSConfig,
        trust: bytes,
        client_options: dict[str, Any] | None = None,
    ) -> tuple[bytes, str]:
        """
        Listen on 127.0.0.1 with implicit TLS around an echo server, connect
        a TLS client that trusts C{trust} (PEM) for C{localhost}, echo a
        line, and wait until both sides have closed.

        @return: The echoed bytes and the negotiated TLS version.
        @raise Exception: Whatever ended the client's connection early.
        """
        echo = _EchoFactory()
        server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await server.listen(implicit_tls_factory(echo, server_context_factory(config)))
        self.addCleanup(port.stopListening)
        options = optionsForClientTLS(
            "localhost",
            Certificate.loadPEM(trust),
            extraCertificateOptions=client_options,
        )
        client = wrapClientTLS(
            options,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        protocol = _Client(b"EHLO client.test\r\n")
        await connectProtocol(client, protocol)
        try:
            return await protocol.done
        finally:
            await DeferredList([p.lost for p in echo.built])

    def test_echo_over_implicit_tls(self) -> None:
        """
        A client that speaks TLS from the first byte completes the handshake,
        verifies the development certificate for C{localhost}, and the
        wrapped protocol sees the plaintext.
        """
        config = _self_signed(self)
        with open(config.certificate, "rb") as f:
            trust = f.read()

        async def check() -> None:
            data, version = await self._exchange(config, trust)
            self.assertEqual(data, b"EHLO client.test\r\n")
            self.assertEqual(version, "TLSv1.3")

        return Deferred.fromCoroutine(check())  # type: ignore[return-value]

    def test_intermediate_sent(self) -> None:
        """
        A client that trusts only the root CA can verify the leaf, because
        the intermediate certificate from the file is sent with it.
        """
        chain = _Chain(self)

        async def check() -> None:
            data, _ = await self._exchange(chain.config, _pem(chain.root))
            self.assertEqual(data, b"EHLO client.test\r\n")

        return Deferred.fromCoroutine(check())  # type: ignore[return-value]

    def test_tls_1_2_client_accepted_by_default(self) -> None:
        """
        With C{minimum_version = "1.2"}, a client limited to TLS 1.2 connects.
        """
        config = _self_signed(self)
        with open(config.certificate, "rb") as f:
            trust = f.read()

        async def check() -> None:
            _, version = await self._exchange(
                config, trust, {"lowerMaximumSecurityTo": TLSVersion.TLSv1_2}
            )
            self.assertEqual(version, "TLSv1.2")

        return Deferred.fromCoroutine(check())  # type: ignore[return-value]

    def test_tls_1_2_client_refused_with_minimum_1_3(self) -> None:
        """
        With C{minimum_version = "1.3"}, the handshake with a client limited
        to TLS 1.2 fails and nothing reaches the wrapped protocol.
        """
        base = _self_signed(self)
        config = TLSConfig(certificate=base.certificate, key=base.key, minimum_version="1.3")
        with open(config.certificate, "rb") as f:
            trust = f.read()

        async def check() -> None:
            try:
                await self._exchange(config, trust, {"lowerMaximumSecurityTo": TLSVersion.TLSv1_2})
            except SSL.Error:
                pass
            else:
                self.fail("the TLS 1.2 handshake succeeded")

        return Deferred.fromCoroutine(check())  # type: ignore[return-value]
