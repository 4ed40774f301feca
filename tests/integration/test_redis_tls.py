"""Redis over TLS: a run through ``rediss://``, with the CA given as a user gives it.

The module makes a throw-away CA and a server certificate for 127.0.0.1 and
localhost (with ``cryptography``, which paramiko, a dependency of
scoop-core, always brings along), and starts a redis-server of its own that
listens on TLS only, on a free loopback port (never the one on 6379). A user
names the CA in the URL, as redis-py's ``Redis.from_url`` reads it:
``rediss://host:port/0?ssl_ca_certs=/path/to/ca.pem`` (every query
parameter redis-py does not parse itself reaches ``SSLConnection`` as a
string, so ``ssl_cert_reqs=required`` works too). The URL travels in the
hub's address, so the workers use the same CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import environ_without_scoop, free_port, run_command, wait_gone
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROGRAM = """
from scoop import futures

def square(x):
    return x * x

if __name__ == "__main__":
    print("RESULT", sum(futures.map(square, range(10))), flush=True)
"""
EXPECTED = str(sum(x * x for x in range(10)))


def _make_certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a key and certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scoop test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = where / "ca.pem", where / "server.pem", where / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass
class TlsServer:
    port: int
    ca: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL a user writes: TLS, and the CA that signed the server's certificate."""
        return f"rediss://{self.address}/0?ssl_ca_certs={self.ca}&ssl_cert_reqs=required"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            socket_connect_timeout=2,
            socket_timeout=5,
        )

    def keys(self, prefix: str) -> list[bytes]:
        client = self.client()
        try:
            return list(client.scan_iter(match=f"{prefix}:*"))
        finally:
            client.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (.ci/run installs it)"
    where = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = _make_certificates(where)
    srv = TlsServer(free_port(), ca)
    argv = [binary, "--port", "0", "--tls-port", str(srv.port)]
    argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    argv += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(where), "--loglevel", "warning", "--logfile", str(where / "redis.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log = (where / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server (TLS) exited with {proc.returncode}:\n{log}")
            client = srv.client()
            try:
                if client.ping():
                    break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not answer over TLS"
                time.sleep(0.05)
            finally:
                client.close()
        yield srv
    finally:
        proc.kill()
        proc.wait()


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    base = environ_without_scoop()
    return {**base, "HOME": str(tmp_path), **settings}


def _results(out: str) -> list[str]:
    return [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]


def test_a_run_over_tls_with_the_ca_in_the_url(write_program, tmp_path, tls_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    prog = write_program(PROGRAM)
    env = _env(
        tmp_path,
        SCOOP_TRANSPORT="redis",
        SCOOP_TRANSPORT_REDIS_URL=tls_server.url,
        SCOOP_TRANSPORT_REDIS_PREFIX=prefix,
    )
    proc = run_command(
        [sys.executable, "-m", "scoop", "-n", "2", str(prog)], cwd=prog.parent, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert _results(proc.stdout) == [EXPECTED]
    assert wait_gone(str(prog)) == []
    assert tls_server.keys(prefix) == []


def test_scoop_run_over_tls_with_the_url_in_scoop_toml(write_program, tmp_path, tls_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    prog = write_program(PROGRAM)
    (tmp_path / "scoop.toml").write_text(
        f'[scoop.transport.redis]\nurl = "{tls_server.url}"\nprefix = "{prefix}"\n'
    )
    proc = run_command(
        ["scoop", "--transport", "redis", "run", "-n", "2", str(prog)],
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert _results(proc.stdout) == [EXPECTED]
    assert wait_gone(str(prog)) == []
    assert tls_server.keys(prefix) == []


@pytest.mark.parametrize(
    ("scheme", "cause"),
    [
        # Plain text to a TLS-only port: the server hangs up ("Connection
        # reset by peer", or "closed by server", depending on timing).
        ("redis", "Connection"),
        # TLS, but without the CA: the certificate is refused.
        ("rediss", "certificate verify failed"),
    ],
)
def test_a_wrong_url_for_the_tls_port_fails_fast_in_one_line(
    write_program, tmp_path, tls_server, scheme, cause
):
    url = f"{scheme}://{tls_server.address}/0"
    prog = write_program(PROGRAM)
    env = _env(tmp_path, SCOOP_TRANSPORT="redis", SCOOP_TRANSPORT_REDIS_URL=url)
    start = time.monotonic()
    proc = run_command(
        [sys.executable, "-m", "scoop", "-n", "2", str(prog)], cwd=prog.parent, env=env, timeout=60
    )
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert took < 20, f"took {took:.1f} s to fail"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"python -m scoop: error: cannot use Redis at {url}: "), lines[0]
    assert cause in lines[0]
    assert _results(proc.stdout) == []
    assert wait_gone(str(prog)) == []
