"""TLS and mutual TLS with certificates made by the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from onnx_models import images

from cnnserve.serving.client import ClassifierClient, ClientTls, open_channel

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it."""
    folder = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=cnnserve-test-ca", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extension in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", *extension, cwd=folder)  # fmt: skip
    return folder


def classify(target: str, tls: ClientTls | None) -> int:
    with open_channel(target, tls) as channel:
        return len(ClassifierClient(channel, timeout_s=10).classify("identity", images(2)).classifications)


def test_tls(start_server, certs: Path) -> None:
    server = start_server(
        "--models", "identity",
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
    )  # fmt: skip
    assert classify(server.target, ClientTls(ca=certs / "ca.pem")) == 2
    with pytest.raises(grpc.RpcError) as caught:
        classify(server.target, None)  # plaintext against a TLS port
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(start_server, certs: Path) -> None:
    server = start_server(
        "--models", "identity",
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "ca.pem"),
    )  # fmt: skip
    with_cert = ClientTls(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
    assert classify(server.target, with_cert) == 2
    with pytest.raises(grpc.RpcError) as caught:
        classify(server.target, ClientTls(ca=certs / "ca.pem"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
