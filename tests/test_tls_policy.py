"""
End-to-end tests of the TLS policy and of certificate reloading: the real
daemon (C{python -m twisted relayd}) on free 127.0.0.1 ports, scanned with
sslyze against Mozilla's "intermediate" profile on both listener kinds
(STARTTLS on SMTP, implicit TLS), with an ECDSA and an RSA certificate;
and C{SIGHUP} swapping the certificate for new handshakes.

sslyze pins C{cryptography < 47}, older than relayd's, so it is installed
from the package index into its own virtual environment, C{.venv/sslyze}
(the C{tlsscan} extra of C{setup.cfg}), once, on first use.
"""

from __future__ import annotations

import configparser
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.test_e2e import ROOT, free_port

SSLYZE_VENV = ROOT / ".venv" / "sslyze"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def sslyze_command() -> Path:
    """
    The C{sslyze} command of C{.venv/sslyze}, made on first use with the
    requirement of the C{tlsscan} extra of C{setup.cfg}.

    @raise RuntimeError: When the environment cannot be made; with pip's
        output.
    """
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    requirement = parser["options.extras_require"]["tlsscan"].strip()
    marker = SSLYZE_VENV / ".installed"
    command = SSLYZE_VENV / "bin" / "sslyze"
    if marker.exists() and marker.read_text() == requirement and command.exists():
        return command
    for argv in (
        [sys.executable, "-m", "venv", "--clear", str(SSLYZE_VENV)],
        [str(SSLYZE_VENV / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.stdout}{done.stderr}")
    marker.write_text(requirement)
    return command


class Authority:
    """
    A test certificate authority that issues server certificates for
    C{localhost} and C{127.0.0.1}, so that a scanner trusting it validates
    the chain like a real one.
    """

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relayd test CA")])
        self.certificate = (
            self._builder(name, name, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
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
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / "ca.pem"
        self.path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, key: PrivateKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )

    def issue(self, kind: str, certificate: Path, key: Path) -> bytes:
        """
        Write a new server certificate and its key.

        @param kind: C{"ecdsa"} (P-256) or C{"rsa"} (2048 bits).
        @return: The certificate, DER.
        """
        private: PrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if kind == "ecdsa"
            else rsa.generate_private_key(65537, 2048)
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        leaf = (
            self._builder(name, self.certificate.subject, private)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        return leaf.public_bytes(serialization.Encoding.DER)


class Relay:
    """
    The real relayd with a STARTTLS and an implicit-TLS listener, using the
    certificate and key at C{folder/cert.pem} and C{folder/key.pem}.
    """

    def __init__(self, folder: Path, tls: str = "") -> None:
        self.folder = folder
        (folder / "tokens.toml").write_text('[tokens.e2e]\nsha256 = "' + "0" * 64 + '"\n')
        self.starttls_port = free_port()
        self.implicit_port = free_port()
        self.config = folder / "relayd.toml"
        self.config.write_text(
            f"""
[server]
hostname = "relay.test"

[[listeners]]
endpoint = "tcp:port={self.starttls_port}:interface=127.0.0.1"
tls = "starttls"

[[listeners]]
endpoint = "tcp:port={self.implicit_port}:interface=127.0.0.1"
tls = "implicit"

[tls]
certificate = "cert.pem"
key = "key.pem"
{tls}

[auth]
tokens_file = "tokens.toml"

[upstream]
url = "http://127.0.0.1:9/send"
"""
        )
        self.log = open(folder / "relayd.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "relayd"]
            + ["--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(folder),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                for port in (self.starttls_port, self.implicit_port):
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("relayd did not start: " + self.logtext()) from None
                time.sleep(0.05)

    def logtext(self) -> str:
        self.log.flush()
        return (self.folder / "relayd.log").read_text("utf-8", "replace")

    def wait_for_log(self, text: str, count: int = 1) -> None:
        """
        Wait until C{text} is in the log C{count} times.
        """
        deadline = time.monotonic() + 10
        while self.logtext().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged {count} time(s): {self.logtext()}")
            time.sleep(0.05)

    def peer_certificates(self) -> tuple[bytes, bytes]:
        """
        Handshake on each listener (STARTTLS after the greeting and EHLO,
        implicit TLS at once) and return the certificates the server sent,
        DER: C{(starttls, implicit)}.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.starttls_port), 10) as raw:
            f = raw.makefile("rb")
            assert f.readline().startswith(b"220 ")
            raw.sendall(b"EHLO client.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220 ")
            with context.wrap_socket(raw) as tls:
                starttls = tls.getpeercert(binary_form=True)
        with socket.create_connection(("127.0.0.1", self.implicit_port), 10) as raw:
            with context.wrap_socket(raw) as tls:
                implicit = tls.getpeercert(binary_form=True)
        assert starttls is not None and implicit is not None
        return starttls, implicit

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def compliance_issues(output: str) -> list[str]:
    """
    The issues sslyze lists under "COMPLIANCE AGAINST TLS CONFIGURATION"
    (lines C{* name: what is wrong}), or C{["no compliance verdict"]} when
    it gave neither issues nor a pass.
    """
    _, found, verdict = output.partition("COMPLIANCE AGAINST TLS CONFIGURATION")
    if not found:
        return ["no compliance verdict"]
    issues = [line.strip() for line in verdict.splitlines() if line.strip().startswith("* ")]
    if not issues and "OK - Compliant" not in verdict:
        return ["no compliance verdict: " + verdict.strip()]
    return issues


class MozillaIntermediateTests(unittest.TestCase):
    """
    sslyze's Mozilla checker, unabridged, on both listener kinds of the
    default configuration.  The certificate is issued by a test CA that
    sslyze is told to trust, so even the certificate checks (trust, key
    type and size, signature, lifetime) run as for a real deployment.
    """

    sslyze: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.sslyze = sslyze_command()

    def scan(self, kind: str) -> None:
        folder = Path(tempfile.mkdtemp(prefix="relayd-tls-policy-"))
        self.addCleanup(shutil.rmtree, folder, True)
        authority = Authority(folder)
        authority.issue(kind, folder / "cert.pem", folder / "key.pem")
        relay = Relay(folder)
        self.addCleanup(relay.stop)
        for label, target in (
            ("STARTTLS", ["--starttls=smtp", f"127.0.0.1:{relay.starttls_port}"]),
            ("implicit TLS", [f"127.0.0.1:{relay.implicit_port}"]),
        ):
            done = subprocess.run(
                [str(self.sslyze), "--mozilla_config=intermediate"]
                + [f"--certinfo_ca_file={authority.path}", *target],
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(
                compliance_issues(done.stdout),
                [],
                f"{kind} certificate, {label}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}",
            )
            self.assertEqual(done.returncode, 0, done.stdout[-2000:])
        self.assertNotIn("Traceback", relay.logtext())

    def test_ecdsa_certificate_meets_mozilla_intermediate(self) -> None:
        """
        With a P-256 ECDSA certificate, both listeners offer TLS 1.2 and 1.3
        with only ECDHE + AEAD suites and the groups X25519, P-256, P-384.
        """
        self.scan("ecdsa")

    def test_rsa_certificate_meets_mozilla_intermediate(self) -> None:
        """
        With an RSA certificate, no suite without forward secrecy (RSA key
        exchange) is offered.
        """
        self.scan("rsa")


class ConfigErrorTests(unittest.TestCase):
    def test_unknown_group_is_one_line_and_exit_78(self) -> None:
        """
        A group OpenSSL does not know stops the daemon at start-up with one
        line naming C{tls.groups}, exit status 78 (EX_CONFIG), no traceback.
        """
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            Authority(folder).issue("ecdsa", folder / "cert.pem", folder / "key.pem")
            (folder / "tokens.toml").write_text("")
            config = folder / "relayd.toml"
            config.write_text(
                '[[listeners]]\nendpoint = "tcp:port=0:interface=127.0.0.1"\n'
                '[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n'
                'groups = ["X25519", "P-999"]\n'
                '[auth]\ntokens_file = "tokens.toml"\n'
            )
            out = subprocess.run(
                [sys.executable, "-m", "twisted", "relayd", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        self.assertEqual(out.returncode, 78, out.stderr)
        self.assertEqual(
            out.stderr.strip().splitlines()[-1],
            f"relayd: {config}: tls.groups: 'P-999': not a group known to OpenSSL",
        )
        self.assertNotIn("Traceback", out.stderr)


class ReloadTests(unittest.TestCase):
    def test_sighup_swaps_the_certificate_and_keeps_it_when_broken(self) -> None:
        """
        After the certificate and key files are replaced and the daemon gets
        C{SIGHUP}, new handshakes on both listeners get the new certificate.
        After a broken file and another C{SIGHUP}, they still get the last
        good one, and the log says why in one warning line.
        """
        folder = Path(tempfile.mkdtemp(prefix="relayd-tls-reload-"))
        self.addCleanup(shutil.rmtree, folder, True)
        authority = Authority(folder)
        first = authority.issue("ecdsa", folder / "cert.pem", folder / "key.pem")
        relay = Relay(folder)
        self.addCleanup(relay.stop)
        self.assertEqual(relay.peer_certificates(), (first, first))

        second = authority.issue("rsa", folder / "cert.pem", folder / "key.pem")
        relay.process.send_signal(signal.SIGHUP)
        relay.wait_for_log("TLS certificate reloaded from ")
        self.assertEqual(relay.peer_certificates(), (second, second))

        (folder / "cert.pem").write_text("not a certificate\n")
        relay.process.send_signal(signal.SIGHUP)
        warning = "TLS certificate not reloaded, keeping the previous one: "
        relay.wait_for_log(warning)
        self.assertEqual(relay.peer_certificates(), (second, second))

        log = relay.logtext()
        (line,) = [line for line in log.splitlines() if warning in line]
        self.assertTrue(
            line.endswith(
                f"{warning}tls.certificate: {folder / 'cert.pem'}: no PEM certificate found"
            ),
            line,
        )
        self.assertIn("#warn]", line)
        self.assertNotIn("Traceback", log)
