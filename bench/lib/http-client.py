# A lean HTTP/1.1 client over raw sockets (keep-alive; Content-Length, chunked or until-close bodies), so that its
# own per-request cost stays small next to the servers'.
# client.py narurls BASE HASHES OUT: fetch every narinfo, check it, write "PATH NARSIZE" lines (untimed).
# client.py narinfo BASE HASHES: GET every narinfo in order over one connection; print total s, mean/p50/p99 µs.
# client.py nars BASE LIST CONNS: download every NAR over CONNS connections (split evenly by size); print s, bytes.
import socket, statistics, sys, threading, time, urllib.parse

class Conn:
    reconnects = 0
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.addr, self.host = (u.hostname, u.port), f"{u.hostname}:{u.port}".encode()
        self.sock, self.scratch = None, memoryview(bytearray(1 << 20))
    def recv(self):
        d = self.sock.recv(65536)
        if not d: raise EOFError("connection closed by the server")
        self.buf += d
    def line(self):
        while (i := self.buf.find(b"\r\n")) < 0: self.recv()
        l = bytes(self.buf[:i]); del self.buf[:i + 2]; return l
    def body(self, n, keep):  # n bytes (None: until close); bytes if keep, else their count
        out, got = bytearray(), 0
        take = len(self.buf) if n is None else min(n, len(self.buf))
        if keep: out += self.buf[:take]
        del self.buf[:take]; got += take
        while n is None or got < n:
            if keep:
                d = self.sock.recv(65536 if n is None else min(n - got, 1 << 20)); k = len(d); out += d
            else:
                k = self.sock.recv_into(self.scratch, len(self.scratch) if n is None else min(n - got, len(self.scratch)))
            if not k:
                if n is None: break
                raise EOFError("connection closed in a body")
            got += k
        return bytes(out) if keep else got
    def get(self, path, keep=True):
        if self.sock is None:
            self.sock = socket.create_connection(self.addr)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = bytearray()
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host + b"\r\n\r\n")
        while (i := self.buf.find(b"\r\n\r\n")) < 0: self.recv()
        head = bytes(self.buf[:i]).decode("latin-1").split("\r\n"); del self.buf[:i + 4]
        status = int(head[0].split()[1])
        h = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in head[1:])}
        chunked, n = "chunked" in h.get("transfer-encoding", "").lower(), h.get("content-length")
        if chunked:
            parts, total = [], 0
            while (size := int(self.line().split(b";")[0], 16)):
                part = self.body(size, keep); self.body(2, True)
                if keep: parts.append(part)
                else: total += part
            while self.line(): pass
            data = b"".join(parts) if keep else total
        else:
            data = self.body(int(n) if n is not None else None, keep or status != 200)
        if (n is None and not chunked) or h.get("connection", "").lower() == "close":
            self.sock.close(); self.sock = None; Conn.reconnects += 1
        if status != 200: sys.exit(f"GET {path}: {head[0]} {data[:200]!r}")
        return data

def warn():
    if Conn.reconnects: print(f"warning: {base} closed the connection {Conn.reconnects} times", file=sys.stderr)

mode, base = sys.argv[1], sys.argv[2]
if mode == "narurls":
    hashes = open(sys.argv[3]).read().split()
    c = Conn(base)
    with open(sys.argv[4], "w") as out:
        for h in hashes:
            fields = dict(l.split(": ", 1) for l in c.get(f"/{h}.narinfo").decode().splitlines() if ": " in l)
            if fields.get("Compression", "bzip2") != "none": sys.exit(f"{h}.narinfo: Compression {fields.get('Compression')}")
            url = urllib.parse.urljoin(base + "/", fields["URL"])
            out.write(f"{urllib.parse.urlsplit(url).path} {fields['NarSize']}\n")
elif mode == "narinfo":
    hashes = open(sys.argv[3]).read().split()
    c = Conn(base)
    c.get("/nix-cache-info")  # the connection is up before the timing
    times = []
    start = time.perf_counter()
    for h in hashes:
        t = time.perf_counter()
        c.get(f"/{h}.narinfo")
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    times.sort()
    print(f"{total:.4f} {statistics.mean(times) * 1e6:.1f} {times[len(times) // 2] * 1e6:.1f} {times[int(len(times) * 0.99)] * 1e6:.1f}")
elif mode == "nars":
    nars = [(p, int(s)) for p, s in (l.split() for l in open(sys.argv[3]))]
    conns = int(sys.argv[4])
    shares, sizes = [[] for _ in range(conns)], [0] * conns
    for p, s in sorted(nars, key=lambda x: -x[1]):
        i = sizes.index(min(sizes)); shares[i].append((p, s)); sizes[i] += s
    clients = [Conn(base) for _ in range(conns)]
    for c in clients: c.get("/nix-cache-info")
    got, errors = [0] * conns, []
    def run(i):
        try:
            for p, s in shares[i]:
                n = clients[i].get(p, keep=False)
                if n != s: raise ValueError(f"GET {p}: {n} bytes, NarSize {s}")
                got[i] += n
        except BaseException as e: errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    total = time.perf_counter() - start
    if errors: sys.exit(str(errors[0]))
    print(f"{total:.4f} {sum(got)}")
warn()
