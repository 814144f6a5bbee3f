"""A real S3-compatible HTTP server for tests and benchmarks: moto's, in a child process on 127.0.0.1.
Needs moto[server] (the dev extra); local_s3 yields None without it.

    from pipeline.testing.s3server import S3Server, local_s3

    server = S3Server()                  # started; server.env() holds AWS_ENDPOINT_URL and dummy keys
    server.make_bucket("data")
    server.stop(); server.start()        # listener closed and open connections cut; buckets kept
    server.require_auth(True)            # moto then rejects unknown access keys (InvalidAccessKeyId)
    server.fail_next(3, 503, "SlowDown") # the next 3 S3 requests get that HTTP error (throttling, 5xx)
    server.objects("s3://data/shards/")  # {relative name: bytes}
    server.close()
    with local_s3() as server: ...       # the same, env set meanwhile (None without moto): benchmarks

The server runs in its own process, so a test's DataLoader workers (forked) never hold its
listening socket, and `stop()` really makes the endpoint refuse connections. It is moto's own WSGI
app served by werkzeug, as `python -m moto.server` does, with one addition: it remembers open
connections so `stop()` can cut them (clients keep connections alive between requests), and it can
answer the next requests with an S3 error document and status of the test's choosing.
The tests talk to it only through the code under test; setup and checks use boto3 against the
same endpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/, for the child's -m
KEYS = {"AWS_ACCESS_KEY_ID": "vssl-test-key", "AWS_SECRET_ACCESS_KEY": "vssl-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
        self._proc = subprocess.Popen([sys.executable, "-m", "pipeline.testing.s3server", str(self.port)],
                                      env={**os.environ, "PYTHONPATH": path},
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("ready")
        self._client = None

    def _expect(self, word: str) -> None:
        line = self._proc.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"S3 test server: expected {word!r}, got {line!r} (exit {self._proc.poll()})")

    def _command(self, command: str) -> None:
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        self._expect("ok")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        """Close the listener and cut open connections: clients get 'connection refused'."""
        self._command("stop")

    def start(self) -> None:
        """Listen again on the same port, with every bucket and object as it was."""
        self._command("start")

    def fail_next(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `count` S3 requests with HTTP `status` and S3 error `code`."""
        self._command(f"fail {count} {status} {code}")

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, **KEYS}

    def require_auth(self, on: bool) -> None:
        """moto's switch: from now on, every request must be signed with a key its IAM knows."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                         method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

    @property
    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        return self._client

    def make_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return f"s3://{name}"

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return bucket, key

    def upload_tree(self, folder: Path, url: str, pattern: str = "*") -> None:
        """Every file under `folder` matching `pattern`, to the same relative names under `url`."""
        bucket, prefix = self._split(url)
        for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):
            key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(folder).as_posix()]))
            self.client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    def objects(self, url: str) -> dict[str, bytes]:
        """{name relative to url: bytes} of every object under the prefix url."""
        bucket, prefix = self._split(url)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix):]] = self.client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@contextlib.contextmanager
def local_s3() -> Iterator[S3Server | None]:
    """An S3Server with its endpoint and dummy keys in os.environ meanwhile; None when moto is not
    installed (benchmarks then report null S3 figures)."""
    try:
        import moto  # noqa: F401
    except ImportError:
        yield None
        return
    server = S3Server()
    saved = dict(os.environ)
    os.environ.update(server.env())
    try:
        yield server
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.close()


def _serve(port: int) -> None:
    """The child process: moto's app on 127.0.0.1:port; commands on stdin (stop, start)."""
    import logging
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto_app = DomainDispatcherApplication(create_backend_app)
    connections: set[socket.socket] = set()
    failing = {"count": 0, "status": 503, "code": "SlowDown"}

    def app(environ, start_response):
        if failing["count"] > 0 and not environ["PATH_INFO"].startswith("/moto-api"):
            failing["count"] -= 1
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{failing['code']}</Code>"
                    f"<Message>injected by the test</Message></Error>").encode()
            if environ["REQUEST_METHOD"] == "HEAD":  # as S3: a HEAD's error has the status only, no body
                body = b""
            start_response(f"{failing['status']} Error", [("Content-Type", "application/xml"),
                                                          ("Content-Length", str(len(body)))])
            return [body]
        return moto_app(environ, start_response)

    class Handler(MotoRequestHandler):
        def setup(self) -> None:
            super().setup()
            connections.add(self.connection)

        def finish(self) -> None:
            connections.discard(self.connection)
            super().finish()

        def log_request(self, *args) -> None:
            pass

    server = None

    def start() -> None:
        nonlocal server
        server = make_server("127.0.0.1", port, app, threaded=True, request_handler=Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        for conn in list(connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    start()
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "fail":
            failing.update(count=int(args[0]), status=int(args[1]), code=args[2])
        else:
            {"stop": stop, "start": start}[command]()
        print("ok", flush=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
