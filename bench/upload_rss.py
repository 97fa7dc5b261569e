#!/usr/bin/env python3
"""Streams a large request body through plumb's HTTP listener and reports plumb's
peak memory (VmHWM from /proc), to show that bodies stream instead of being
buffered.  Run from the repository root after `cargo build --release -p plumb`:

    python3 bench/upload_rss.py [--gib 1] [--binary target/release/plumb]

Everything runs on 127.0.0.1; every process it starts is stopped by PID.
"""
import argparse, os, socket, subprocess, sys, tempfile, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def sink_origin(port, received):
    """An HTTP/1.1 origin that reads a Content-Length body, discards it, answers 200."""
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(8)
    def handle(c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d: return
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length": length = int(v)
        got = len(rest)
        while got < length:
            d = c.recv(1 << 20)
            if not d: break
            got += len(d)
        received.append(got)
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        c.close()
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"): return int(line.split()[1])
    return 0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--binary", default="target/release/plumb")
    a = ap.parse_args()
    size = int(a.gib * (1 << 30))
    origin, listen = free_port(), free_port()
    received = []
    threading.Thread(target=sink_origin, args=(origin, received), daemon=True).start()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'[runtime]\naccess_log = "off"\n[admin]\nlisten = "127.0.0.1:0"\n'
              f'[[listener]]\nname = "web"\nprotocol = "http"\nlisten = "127.0.0.1:{listen}"\npool = "sink"\n'
              f'[[pool]]\nname = "sink"\nbackends = ["127.0.0.1:{origin}"]\n')
    cfg.close()
    plumb = subprocess.Popen([a.binary, "serve", "-c", cfg.name], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try: socket.create_connection(("127.0.0.1", listen), timeout=0.1).close(); break
            except OSError: time.sleep(0.05)
        base = hwm_kib(plumb.pid)
        c = socket.create_connection(("127.0.0.1", listen))
        c.sendall(f"POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-length: {size}\r\n\r\n".encode())
        chunk = b"x" * (1 << 20)
        t0 = time.time(); sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            c.sendall(chunk[:n]); sent += n
        resp = c.recv(4096)
        secs = time.time() - t0
        peak = hwm_kib(plumb.pid)
        ok = resp.startswith(b"HTTP/1.1 200") and received and received[0] == size
        print(f"body {size / (1 << 20):.0f} MiB in {secs:.2f} s ({size / (1 << 20) / secs:.0f} MiB/s); "
              f"plumb peak RSS {peak / 1024:.1f} MiB (at start {base / 1024:.1f} MiB); origin got {received[0] if received else 0} bytes; {'ok' if ok else 'FAILED'}")
        sys.exit(0 if ok else 1)
    finally:
        plumb.terminate()
        try: plumb.wait(10)
        except subprocess.TimeoutExpired: plumb.kill()
        os.unlink(cfg.name)

if __name__ == "__main__":
    main()
