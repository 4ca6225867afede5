"""Throwaway TLS certificates made with openssl: a CA, a server and a client, qemu's names."""

from __future__ import annotations

import pathlib
import subprocess
import time


# -- throwaway certificates ------------------------------------------------------------
def openssl(*args: str, cwd: pathlib.Path) -> None:
    """Run ``openssl ARGS`` in ``cwd``; its output is kept only in the error."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(folder: pathlib.Path, name: str, cn: str, extensions: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
             cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-set_serial", str(int(time.time_ns() % 10**12)), "-days", "2",
             "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem", cwd=folder)  # fmt: skip
    (folder / f"{name}.csr").unlink()
    (folder / f"{name}.ext").unlink()


def make_cert_dir(folder: pathlib.Path) -> pathlib.Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client one, qemu's names.

    The same directory is a server's (server-*.pem) and a libnbd or qemu
    client's (client-*.pem, ca-cert.pem) ``tls-certificates`` directory.
    """
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2",
             "-subj", "/CN=stowkit test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    usage = "keyUsage=critical,digitalSignature,keyEncipherment\n"
    server = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    _signed(folder, "server", "localhost", server + usage)
    _signed(folder, "client", "stowkit test client", "extendedKeyUsage=clientAuth\n" + usage)
    return folder
