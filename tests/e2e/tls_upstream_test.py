"""End-to-end: the gateway calls an OpenAI-compatible upstream over HTTPS, directly or through an
egress proxy named by HTTPS_PROXY (a CONNECT tunnel; NO_PROXY honoured).

The upstream is a real TLS server (Python's ssl module) with a certificate issued by a throwaway
CA made with the openssl CLI. The gateway trusts the machine's roots, read by rustls through
SSL_CERT_FILE here, so a gateway told about the CA gets answers and one that is not refuses the
handshake: certificate checks are on, and the API key only ever travels inside TLS.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))

import openai  # noqa: E402
from gateway import Gateway  # noqa: E402

KEY = "sk-tls-test-key"


def make_pki(d):
    """A CA and a localhost leaf certificate signed by it."""

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=OptiRoute test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem",
        "-days", "2", "-extfile", "ext.cnf")


class Upstream(BaseHTTPRequestHandler):
    """Chat completions in OpenAI's wire format, JSON or SSE."""

    protocol_version = "HTTP/1.1"
    seen = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Upstream.seen.append({"auth": self.headers.get("authorization"), "path": self.path, "body": body})
        prompt = body["messages"][-1]["content"]
        reply = "tls reply to: " + prompt
        if body.get("stream"):
            events = [
                {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": part}, "finish_reason": None}]}
                for part in (reply[:5], reply[5:])
            ]
            events.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                           "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
            data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            ctype = "text/event-stream"
        else:
            data = json.dumps({
                "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ConnectProxy:
    """A forward proxy that only tunnels (HTTP CONNECT), recording each target it was asked for."""

    def __init__(self):
        self.targets = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            client.close()
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self):
        self.sock.close()


class TlsUpstreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        d = cls.dir.name
        make_pki(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "leaf.pem"), os.path.join(d, "leaf.key"))
        cls.server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        cls.server.socket = ctx.wrap_socket(cls.server.socket, server_side=True)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        port = cls.server.server_address[1]
        cls.config = os.path.join(d, "gw.toml")
        with open(cls.config, "w") as f:
            f.write(f"""
[cache]
enabled = false
[resilience]
max_attempts = 1
[[providers]]
name = "secure"
kind = "openai"
base_url = "https://localhost:{port}/v1"
api_key_env = "TLS_TEST_KEY"
[[deployments]]
name = "s"
provider = "secure"
model = "upstream-model"
tier = "cloud"
""")
        cls.gw = Gateway("--config", cls.config,
                         env={"TLS_TEST_KEY": KEY, "SSL_CERT_FILE": os.path.join(d, "ca.pem")})
        cls.client = openai.OpenAI(base_url=cls.gw.url + "/v1", api_key="unused", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.server.shutdown()
        cls.dir.cleanup()

    def test_json_over_tls_carries_the_key(self):
        Upstream.seen.clear()
        raw = self.client.chat.completions.with_raw_response.create(
            model="s", messages=[{"role": "user", "content": "over tls"}])
        r = raw.parse()
        self.assertEqual(r.choices[0].message.content, "tls reply to: over tls")
        self.assertEqual(raw.headers["x-optiroute-provider"], "secure")
        self.assertEqual(len(Upstream.seen), 1)
        self.assertEqual(Upstream.seen[0]["auth"], "Bearer " + KEY)
        self.assertEqual(Upstream.seen[0]["path"], "/v1/chat/completions")
        self.assertEqual(Upstream.seen[0]["body"]["model"], "upstream-model")

    def test_stream_over_tls(self):
        stream = self.client.chat.completions.create(
            model="s", messages=[{"role": "user", "content": "stream it"}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.assertEqual(text, "tls reply to: stream it")

    def test_through_an_egress_proxy_named_by_https_proxy(self):
        proxy = ConnectProxy()
        port = self.server.server_address[1]
        ca = os.path.join(self.dir.name, "ca.pem")
        try:
            env = {"TLS_TEST_KEY": KEY, "SSL_CERT_FILE": ca, "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
                   "NO_PROXY": "", "no_proxy": ""}
            with Gateway("--config", self.config, env=env) as gw:
                client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
                r = client.chat.completions.create(model="s", messages=[{"role": "user", "content": "via proxy"}])
                self.assertEqual(r.choices[0].message.content, "tls reply to: via proxy")
                stream = client.chat.completions.create(
                    model="s", messages=[{"role": "user", "content": "streamed via proxy"}], stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                self.assertEqual(text, "tls reply to: streamed via proxy")
            self.assertIn(f"localhost:{port}", proxy.targets, "the upstream was not reached through the proxy")
            # NO_PROXY exempts the upstream: straight there, the proxy sees nothing.
            proxy.targets.clear()
            env["NO_PROXY"] = "localhost"
            with Gateway("--config", self.config, env=env) as gw:
                client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
                r = client.chat.completions.create(model="s", messages=[{"role": "user", "content": "direct"}])
                self.assertEqual(r.choices[0].message.content, "tls reply to: direct")
            self.assertEqual(proxy.targets, [])
        finally:
            proxy.close()

    def test_an_untrusted_certificate_is_refused(self):
        Upstream.seen.clear()
        # The CA is not among this gateway's roots: an empty root file stands in for the system's.
        empty = os.path.join(self.dir.name, "empty.pem")
        open(empty, "w").close()
        with Gateway("--config", self.config, env={"TLS_TEST_KEY": KEY, "SSL_CERT_FILE": empty}) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
            with self.assertRaises(openai.APIStatusError) as cm:
                client.chat.completions.create(model="s", messages=[{"role": "user", "content": "x"}])
            self.assertIn(cm.exception.status_code, (502, 503))
            self.assertIn("connection failed", str(cm.exception))
            self.assertNotIn(KEY, str(cm.exception))
        self.assertEqual(Upstream.seen, [], "no request may reach an upstream whose certificate failed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
