"""A small HTTP server for the `nsbox serve` tests, run inside environments.

GET  /hello            "hello from <hostname>"
GET  /headers          JSON: the request's path, method and headers
POST /echo             the body back, streamed (Content-Length or chunked in, chunked out)
POST /sink             reads the body: "<bytes> <sha256>"
GET  /bytes?n=N        N bytes, streamed in chunks
GET  /slow?s=S         answers after S seconds
GET  /close            closes the connection without a response
GET  /two-lengths      a response framed two ways (Content-Length and chunked): invalid
GET  /stray            a 204 followed by 5 stray bytes, in one write (a broken server)
GET  /resolve?name=X   the address X resolves to, from inside the environment
GET  /ws               a websocket echo (text and binary frames, masked from the client)
GET  /env?name=K       the environment variable K
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request on stderr, as usual
        sys.stderr.write("app: " + (fmt % args) + "\n")

    def _send(self, status, body, ctype="text/plain"):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/hello":
            return self._send(200, f"hello from {socket.gethostname()}")
        if url.path == "/headers":
            headers = {k.lower(): v for k, v in self.headers.items()}
            return self._send(200, json.dumps({"path": self.path, "method": self.command,
                                               "headers": headers}),
                              "application/json")
        if url.path == "/bytes":
            n = int(q.get("n", "0"))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"x" * CHUNK
            while n > 0:
                self._chunk(block[: min(n, CHUNK)])
                n -= CHUNK
            self.wfile.write(b"0\r\n\r\n")
            return None
        if url.path == "/slow":
            time.sleep(float(q.get("s", "1")))
            return self._send(200, "slow")
        if url.path == "/stray":
            self.log_request(204)
            self.wfile.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
            return None
        if url.path == "/two-lengths":
            self.log_request(200)
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            return None
        if url.path == "/close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if url.path == "/resolve":
            try:
                return self._send(200, socket.gethostbyname(q["name"]))
            except OSError as exc:
                return self._send(404, str(exc))
        if url.path == "/env":
            return self._send(200, os.environ.get(q.get("name", ""), ""))
        if url.path == "/ws":
            return self._websocket()
        return self._send(404, "not found")

    do_HEAD = do_GET

    def _body(self):
        """The request body in pieces (Content-Length or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    data = self.rfile.read(min(size, CHUNK))
                    size -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        while left:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                return
            left -= len(data)
            yield data

    def do_POST(self):
        if self.path == "/sink":
            digest, n = hashlib.sha256(), 0
            for data in self._body():
                digest.update(data)
                n += len(data)
            return self._send(200, f"{n} {digest.hexdigest()}")
        if self.path != "/echo":
            return self._send(404, "not found")
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for data in self._body():
            self._chunk(data)
        self.wfile.write(b"0\r\n\r\n")
        return None

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:  # close: echo it and end
                self.wfile.write(bytes([0x88, len(payload)]) + payload)
                return
            size = (bytes([len(payload)]) if len(payload) < 126
                    else b"\x7e" + struct.pack("!H", len(payload)))
            self.wfile.write(bytes([0x80 | opcode]) + size + payload)
            self.wfile.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 8000),
                                 Handler)
    server.daemon_threads = True
    server.serve_forever()
