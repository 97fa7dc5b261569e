//! Small Python programs to run inside lab hosts with [`crate::Host::python`]:
//! servers and clients that the scenarios need and that a fresh machine can run
//! without installing anything (Python 3's standard library only).

/// An HTTP server: `ADDR PORT [single]`. `GET /bytes/N` answers N bytes, any other
/// GET `ok`, `POST` reads the body and answers `got N`. By default a thread per
/// connection with keep-alive; `single` serves one connection at a time and closes
/// it after each response (HTTP/1.0), blocking on a connection that sends nothing,
/// like the backend of incident 004.
pub const HTTP_SERVER: &str = r#"
import sys, http.server
addr, port = sys.argv[1], int(sys.argv[2])
single = len(sys.argv) > 3 and sys.argv[3] == "single"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0" if single else "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            self.reply(b"x" * int(self.path[7:]))
        else:
            self.reply(b"ok\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.reply(b"got %d\n" % len(self.rfile.read(n)))
cls = http.server.HTTPServer if single else http.server.ThreadingHTTPServer
cls.allow_reuse_address = True
cls.daemon_threads = True
cls.request_queue_size = 64
cls((addr, port), H).serve_forever()
"#;

/// A TCP echo server, a thread per connection: `ADDR PORT`.
pub const ECHO_SERVER: &str = r#"
import sys, socketserver
class E(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(65536)
            if not b:
                return
            self.request.sendall(b)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), E).serve_forever()
"#;

/// Opens `N` connections to `ADDR PORT` and holds them open, sending nothing;
/// prints `held K` once all attempts are done (K that connected), then sleeps.
pub const HOLD: &str = r#"
import sys, socket, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keep = []
for _ in range(n):
    try:
        keep.append(socket.create_connection((addr, port), timeout=2))
    except OSError:
        pass
print("held %d" % len(keep), flush=True)
while True:
    time.sleep(60)
"#;

/// A server that listens with a backlog of 1 and never accepts: its accept queue
/// overflows at the second waiting connection. `ADDR PORT`.
pub const NEVER_ACCEPTS: &str = r#"
import sys, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
while True:
    time.sleep(60)
"#;

/// A long-lived client of an echo service: `ADDR PORT SECONDS talk|quiet`. It
/// checks one echo and prints `echoed`; then `talk` sends `ping` every 100 ms and
/// reads the echo, `quiet` only waits to read. It prints how the connection ended —
/// `reset after N echoes`, `eof after N echoes`, `silence after N echoes` (no
/// answer to a ping within 5 s) or `open after N echoes` (still open after
/// SECONDS) — and exits.
pub const ECHO_CLIENT: &str = r#"
import sys, socket, time
addr, port, seconds, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = socket.create_connection((addr, port), timeout=5)
s.sendall(b"hello")
assert s.recv(5) == b"hello"
print("echoed", flush=True)
n, end = 0, time.monotonic() + seconds
def done(how):
    print("%s after %d echoes" % (how, n), flush=True)
    sys.exit(0)
while time.monotonic() < end:
    try:
        if mode == "talk":
            time.sleep(0.1)
            s.sendall(b"ping")
            got = s.recv(4)
        else:
            s.settimeout(max(end - time.monotonic(), 0.01))
            got = s.recv(4)
    except ConnectionResetError:
        done("reset")
    except socket.timeout:
        done("silence" if mode == "talk" else "open")
    if not got:
        done("eof")
    n += 1
done("open")
"#;

/// `ADDR PORT N TIMEOUT`: N HTTP/1.0 GETs one after the other, each on a new
/// connection, each bounded by TIMEOUT seconds; prints one JSON array of
/// `{"ok": 200 seen, "s": seconds from connect to the end, "error": ...}`.
pub const TIMED_GETS: &str = r#"
import sys, socket, time, json
addr, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = []
for _ in range(n):
    t, ok, err = time.monotonic(), False, None
    try:
        s = socket.create_connection((addr, port), timeout=timeout)
        s.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        ok = data.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]
    except OSError as e:
        err = type(e).__name__
    out.append({"ok": ok, "s": time.monotonic() - t, "error": err})
print(json.dumps(out), flush=True)
"#;
