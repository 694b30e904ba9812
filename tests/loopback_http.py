"""A loopback HTTP file server for tests: serves in-memory files, misbehaves on cue.

    with LoopbackServer({"/a.tar": data}) as server:
        server.add("/b.bin", other, cut_after=65536, cut_times=1)  # first body is cut
        download(server.url("/b.bin"), dest)
        assert [r.range for r in server.hits("/b.bin")] == [None, "bytes=65536-"]

Knobs per file: status=503 answers that status (to the first `status_times`
requests; None: to all); cut_after=N announces the full Content-Length but closes
the connection after N body bytes, an interrupted transfer (first `cut_times`
bodies; None: all); stall_after=N with stall_for=S sends N body bytes, then
nothing for S seconds, then the rest: a server that hangs mid-transfer (first
`stall_times` bodies; None: all); ignore_range=True answers 200 with the whole
body even to a Range request, as some servers and proxies do.

stop() does not wait for a stall to end: it wakes every stalled handler, which
closes its connection, and joins all handler threads.
"""
import collections
import dataclasses
import http.server
import re
import sys
import threading
import urllib.parse

# Every request, in order, so tests can assert what the client did.
# range: the Range header or None; sent: body bytes written (before a stall, if it stalled).
Request = collections.namedtuple("Request", "method path query range status sent stalled")


@dataclasses.dataclass
class File:
    body: bytes
    ignore_range: bool = False
    cut_after: int = None
    cut_times: int = None
    stall_after: int = None
    stall_for: float = None  # seconds
    stall_times: int = None
    status: int = None
    status_times: int = None
    headers: dict = dataclasses.field(default_factory=dict)  # extra response headers


def _take(file, knob):
    """True if `knob` ('cut' / 'stall' / 'status') applies to this request; counts it down."""
    left = getattr(file, f"{knob}_times")
    if left is not None:
        if left <= 0:
            return False
        setattr(file, f"{knob}_times", left - 1)
    return True


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so closing it ends exactly one response.
    protocol_version = "HTTP/1.0"
    timeout = 5  # a client that connects and sends nothing must not block stop() for long

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def log_message(self, *args):  # quiet: tests read the request log instead
        pass

    def _answer(self, send_body):
        owner = self.server.owner
        parts = urllib.parse.urlsplit(self.path)
        rng = self.headers.get("Range")
        status, body, cut, stall, extra = 404, b"not found\n", None, None, {}
        with owner.lock:  # handler threads run concurrently and the knobs count down
            file = owner.files.get(parts.path)
            if file is not None and file.status is not None and _take(file, "status"):
                status, body, extra = file.status, f"HTTP {file.status}\n".encode(), dict(file.headers)
            elif file is not None:
                status, body, extra = self._select(file, rng)
                if status != 416 and file.cut_after is not None and send_body and _take(file, "cut"):
                    cut = file.cut_after
                if status != 416 and file.stall_after is not None and send_body and _take(file, "stall"):
                    stall = (file.stall_after, file.stall_for)
        sent = body if cut is None else body[:cut]
        before_stall = sent if stall is None else sent[:stall[0]]
        with owner.lock:  # logged before answering: the client may be done before we are
            owner.requests.append(Request(self.command, parts.path, parts.query, rng, status,
                                          len(before_stall) if send_body else 0, stall is not None))
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # the full length, even when cut
        self.end_headers()
        if send_body:
            self.wfile.write(before_stall)
            self.wfile.flush()
            # Woken early by stop(): close instead of sending the rest.
            if stall is not None and not owner.stopping.wait(stall[1]):
                self.wfile.write(sent[len(before_stall):])
        self.wfile.flush()
        self.close_connection = True  # after a cut the client sees EOF mid-body

    @staticmethod
    def _select(file, rng):
        """(status, body, headers) for a GET/HEAD of `file`, honouring 'bytes=N-[M]'."""
        size, extra = len(file.body), dict(file.headers, **{"Accept-Ranges": "bytes"})
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (rng or "").strip())
        if file.ignore_range or not m:  # no Range, or one we do not do (multi-range): all of it
            return 200, file.body, extra
        start = int(m.group(1))
        if start >= size:
            return 416, b"", dict(extra, **{"Content-Range": f"bytes */{size}"})
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
        return 206, file.body[start:end], dict(extra, **{"Content-Range": f"bytes {start}-{end - 1}/{size}"})


class _Server(http.server.ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them (block_on_close):
    # stop() returns only when no handler is left running.
    daemon_threads = False

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a client hanging up is not news


class LoopbackServer:
    """In-memory files at URL paths, on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, files=None):
        self.files, self.requests, self.lock = {}, [], threading.Lock()
        self.stopping = threading.Event()  # set by stop(): stalled handlers give up
        for path, body in (files or {}).items():
            self.add(path, body)
        self._httpd = self._thread = None

    def add(self, path, body, **knobs):
        """Serve `body` at `path` (matched without the query string); knobs: see File."""
        with self.lock:
            self.files[path] = File(body, **knobs)

    def url(self, path):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def hits(self, path):
        """The requests for `path`, in order."""
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def start(self):
        self.stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        # A short poll interval keeps stop() fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-http", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is None:
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()  # closes the socket and joins the request threads
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            raise RuntimeError("loopback HTTP server thread did not stop")
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
