"""Debian's nginx on loopback, run from the configuration in deploy/nginx as docs/deployment.md
shows it, in front of real `productflo serve` processes.

Nothing is downloaded: nginx is /usr/sbin/nginx (`apt-get install -y nginx`), and the unit's
check runs /usr/bin/systemd-analyze. Where one is missing, the tests that need it are skipped with
the command that installs it as the reason, and the terminal summary names them
(tests/system_programs.py, as for the browser tests).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port
from tests.system_programs import Requirement, missing_program

NGINX = Path("/usr/sbin/nginx")
INSTALL = "apt-get install -y nginx"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = DEPLOY / "nginx" / "productflo.conf"
PROXY = DEPLOY / "nginx" / "productflo-proxy.conf"

# What the test replaces in deploy/nginx/productflo.conf, and nothing else: the backends, the
# ports nginx listens on, the certificate. Each must be found, so the file cannot drift away.
BACKENDS = ("127.0.0.1:8001", "127.0.0.1:8002")
LISTEN_HTTP = "listen 80;"
LISTEN_HTTPS = "listen 443 ssl;"
CERTIFICATE = "/etc/ssl/certs/productflo.example.com.pem"
KEY = "/etc/ssl/private/productflo.example.com.key"
STARTUP_TIMEOUT = 30.0


HERE = Path(__file__).resolve().parent
NGINX_NEEDED = Requirement("nginx", HERE, missing_program(NGINX, INSTALL))
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
SYSTEMD_NEEDED = Requirement(
    "systemd-analyze", HERE, missing_program(SYSTEMD_ANALYZE, "apt-get install -y systemd")
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    NGINX_NEEDED.skip_missing(items, needs=lambda item: "start_nginx" in _fixtures(item))
    SYSTEMD_NEEDED.skip_missing(items, needs=lambda item: "systemd_analyze" in _fixtures(item))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    NGINX_NEEDED.summarize(terminalreporter)
    SYSTEMD_NEEDED.summarize(terminalreporter)


def _fixtures(item: pytest.Item) -> Sequence[str]:
    """What a test uses (a test of the documentation alone runs without nginx)."""
    return getattr(item, "fixturenames", ())


@pytest.fixture
def systemd_analyze() -> Path:
    return SYSTEMD_ANALYZE


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1, and a client context that trusts only it."""

    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(tmp_path / "productflo.pem", tmp_path / "productflo.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def render(backends: Sequence[int], http_port: int, https_port: int, cert: Certificate) -> str:
    """deploy/nginx/productflo.conf with the test's backends, ports and certificate."""
    text = CONFIG.read_text()
    replacements = [
        *(
            (f"server {placeholder};", f"server 127.0.0.1:{port};")
            for placeholder, port in zip(BACKENDS, backends, strict=True)
        ),
        (LISTEN_HTTP, f"listen 127.0.0.1:{http_port};"),
        (LISTEN_HTTPS, f"listen 127.0.0.1:{https_port} ssl;"),
        (CERTIFICATE, str(cert.cert)),
        (KEY, str(cert.key)),
    ]
    for old, new in replacements:
        assert old in text, f"{CONFIG.name} no longer has {old!r}: update the test and the docs"
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    directory: Path
    http_port: int
    https_port: int
    cert: Certificate

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> int:
        """Fast shutdown (SIGTERM), as `systemctl stop nginx` does; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _main_config(directory: Path) -> str:
    """What /etc/nginx/nginx.conf is on Debian, cut to the bone and kept inside `directory`."""
    temp = directory / "temp"
    # As root the master process would hand the workers to `nobody`, who may not enter pytest's
    # temporary directory (mode 0700), where their temp paths are; so they stay root here.
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n"
        f"{paths}\n"
        "    include conf.d/productflo.conf;\n"
        "}\n"
    )


def _wait_listening(process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (directory / "output.log").read_text(errors="replace")
            log = directory / "error.log"
            errors = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"nginx exited {process.returncode}:\n{output}\n{errors}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError("nginx never listened")


@pytest.fixture
def start_nginx(tmp_path: Path, certificate: Certificate) -> Iterator[Any]:
    """`start_nginx(backend_ports)`: nginx with deploy/nginx's configuration in front of them,
    in a directory of its own; always stopped, and killed if need be, at the end of the test."""
    started: list[Nginx] = []

    def start(backends: Sequence[int]) -> Nginx:
        directory = tmp_path / f"nginx-{len(started)}"
        (directory / "conf.d").mkdir(parents=True)
        (directory / "snippets").mkdir()
        (directory / "temp").mkdir()
        http_port, https_port = free_port(), free_port()
        conf = directory / "conf.d" / "productflo.conf"
        conf.write_text(render(backends, http_port, https_port, certificate))
        (directory / "snippets" / PROXY.name).write_text(PROXY.read_text())
        (directory / "nginx.conf").write_text(_main_config(directory))
        command = [
            str(NGINX),
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            "-e",  # from the start, before the configuration names it
            str(directory / "error.log"),
            "-g",
            f"daemon off; pid {directory / 'nginx.pid'}; error_log {directory / 'error.log'};",
        ]
        check = subprocess.run(
            [*command, "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stderr
        # Its output goes to a file, not a pipe: nobody has to read it for nginx to go on.
        with (directory / "output.log").open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        nginx = Nginx(process, directory, http_port, https_port, certificate)
        started.append(nginx)
        _wait_listening(process, https_port, directory)
        return nginx

    yield start
    for nginx in started:
        try:
            nginx.stop()
        finally:
            if nginx.process.poll() is None:
                nginx.process.kill()
                nginx.process.wait(timeout=10)
        print(f"--- nginx in {nginx.directory}, exit {nginx.process.returncode}")
        print(nginx.error_log())
