"""Starts the real infergate binary on loopback ports chosen by the OS, for tritonclient tests."""
import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("INFERGATE_BIN", os.path.join(ROOT, "target", "debug", "infergate"))
REPO = os.path.join(ROOT, "models", "repository")


class Server:
    def __init__(self, proc, http, grpc, admin):
        self.proc, self.http, self.grpc, self.admin = proc, http, grpc, admin


def start(repo, *extra):
    """Starts infergate on `repo` (and `extra` arguments) and waits for its 'serving' line."""
    proc = subprocess.Popen(
        [BINARY, "serve", "--model-repository", repo, "--http-addr", "127.0.0.1:0",
         "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("infergate serving:") or proc.poll() is not None:
            break
    m = re.search(r"http=(\S+) grpc=(\S+) admin=(\S+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"server did not start (exit {proc.poll()}): {line!r}")
    return Server(proc, *m.groups())


def stop(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0, "infergate must exit cleanly on SIGTERM"


@pytest.fixture(scope="session")
def server():
    s = start(REPO)
    yield s
    stop(s)
