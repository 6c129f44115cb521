#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace sink for benchmarks: accepts `POST /v1/traces` (protobuf), answers
an empty ExportTraceServiceResponse, and counts exports and bytes. Listens on loopback only.

Usage: otlp_sink.py PORT_FILE STATS_FILE  (writes its port to PORT_FILE; on SIGTERM or SIGINT
writes {"exports": N, "bytes": B} to STATS_FILE and exits)."""
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
stats = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with lock:
            stats["exports"] += 1
            stats["bytes"] += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port_file, stats_file = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)

    def stop(*_):
        with lock, open(stats_file, "w") as f:
            json.dump(stats, f)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(port_file, "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
