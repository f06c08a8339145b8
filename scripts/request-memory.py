#!/usr/bin/env python3
"""What one request can make a standalone server hold: peak resident size (VmHWM) before and
after 16 MiB form posts of `a&a&a&…` to /api/callback, one and then three at once, an anonymous
16 MiB push to /api/webhook, and an authenticated 10 MiB push of five million zeros.

    python3 scripts/request-memory.py [BINARY]      (default: target/debug/tcbridge)

Starts `BINARY serve --standalone` on a free loopback port with its own store in a temporary
folder, and stops it. The figures in the README come from this script (issue 20).
"""

import base64
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def post(port: int, path: str, body: bytes, content_type: str, extra: str = "") -> str:
    """Sends the whole body whatever the server says meanwhile; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            s.sendall(head.encode() + body)
        except OSError:
            pass  # the server answered and closed before taking it all: that is the point
        try:
            return s.recv(200).split(b"\r\n")[0].decode(errors="replace") or "(closed)"
        except OSError:
            return "(closed)"


def start(binary: pathlib.Path, folder: str, port: int) -> tuple[subprocess.Popen, dict]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LOCAL_STORE_PATH": os.path.join(folder, "store"),
        "FUNCTION_KEY": "request-memory-key-0123456789",
        "TRUECONTEXT_BASE_URL": "http://127.0.0.1:9/api/1.1",
        # An API-key connection ("default"), so an authenticated push has a connection to go to.
        "TRUECONTEXT_AUTH": "basic",
        "TRUECONTEXT_API_KEY_ID": "request-memory",
        "TRUECONTEXT_API_KEY_SECRET": "request-memory-secret-0123",
        "WEBHOOK_AUTH": "basic",
        "WEBHOOK_BASIC_USERNAME": "tc",
        "WEBHOOK_BASIC_PASSWORD": "request-memory-password-0123",
        "RUST_LOG": "warn",
    }
    server = subprocess.Popen(
        [str(binary), "serve", "--standalone", "--port", str(port)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    return server, env


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def main() -> None:
    binary = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug/tcbridge").resolve()
    body = (b"a&" * (8 * MIB))[: 16 * MIB]
    print(f"binary: {binary}")
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server, _ = start(binary, folder, port)
        try:
            idle = peak_rss(server.pid)
            print(f"idle peak RSS: {idle / MIB:.1f} MiB")
            status = post(port, "/api/callback", body, "application/x-www-form-urlencoded")
            one = peak_rss(server.pid)
            print(f"after one 16 MiB callback post ({status}): {one / MIB:.1f} MiB")
            statuses = []
            threads = [
                threading.Thread(
                    target=lambda: statuses.append(
                        post(port, "/api/callback", body, "application/x-www-form-urlencoded")))
                for _ in range(3)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            three = peak_rss(server.pid)
            print(f"after three at once ({', '.join(statuses)}): {three / MIB:.1f} MiB")
            status = post(port, "/api/webhook", body, "application/json")
            push = peak_rss(server.pid)
            print(f"after an anonymous 16 MiB push ({status}): {push / MIB:.1f} MiB")
        finally:
            stop(server)
    # A fresh server, so the figures above do not hide this one.
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server, env = start(binary, folder, port)
        try:
            idle = peak_rss(server.pid)
            zeros = (
                b'{"identifier": "1", "pages": [{"sections": [{"answers": [{"label": "A", "values": ['
                + b"0," * (5 * 1000 * 1000) + b'0]}]}]}]}'
            )
            credentials = base64.b64encode(b"tc:" + env["WEBHOOK_BASIC_PASSWORD"].encode()).decode()
            status = post(port, "/api/webhook", zeros, "application/json", f"Authorization: Basic {credentials}\r\n")
            time.sleep(5)  # a push that was accepted is processed meanwhile
            authenticated = peak_rss(server.pid)
            print(f"fresh server, idle {idle / MIB:.1f} MiB; after an authenticated {len(zeros) / MIB:.1f} MiB push "
                  f"of five million zeros ({status}): {authenticated / MIB:.1f} MiB")
        finally:
            stop(server)


if __name__ == "__main__":
    main()
