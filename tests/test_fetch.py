"""`par fetch`: sha256-pinned downloads (pooch), served by a local HTTP server: these tests never touch the network."""

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from par.cli import main
from par.data import fetch as fetch_mod
from par.data.fetch import fetch
from par.errors import UserError

DATA = b"released weights " * 1000
SHA = hashlib.sha256(DATA).hexdigest()


class Server:
    """Serves `files` (path → bytes) on 127.0.0.1; `fail` answers that many requests with `fail_status` first."""

    def __init__(self):
        self.files, self.requests, self.fail, self.fail_status = {"/w.pt": DATA}, [], 0, 503
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                status = server.fail_status if server.fail else 200 if body is not None else 404
                server.fail = max(server.fail - 1, 0)
                body = body if status == 200 else b"no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(autouse=True)
def no_waits_no_proxy(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BACKOFF", 0.0)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 directly, never through a proxy


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _leftovers(folder, out):
    return sorted(p.name for p in folder.iterdir() if p.name not in (out.name, f"{out.name}.sha256"))


def test_pinned_download_is_verified_and_pinned(server, tmp_path, capsys):
    out = tmp_path / "downloads" / "w.pt"
    assert main(["fetch", "--url", f"{server.url}/w.pt", "--out", str(out), "--sha256", SHA.upper()]) == 0
    assert capsys.readouterr().out.strip() == SHA
    assert out.read_bytes() == DATA
    assert (tmp_path / "downloads" / "w.pt.sha256").read_text() == f"{SHA}  w.pt\n"
    assert _leftovers(out.parent, out) == [] and server.requests == ["/w.pt"]


def test_mismatch_is_one_error_and_leaves_no_file(server, tmp_path, capsys):
    out, wrong = tmp_path / "w.pt", "0" * 64
    assert main(["fetch", "--url", f"{server.url}/w.pt", "--out", str(out), "--sha256", wrong]) == 2
    err = capsys.readouterr().err
    assert f"{server.url}/w.pt: sha256 mismatch: expected {wrong}" in err and f"downloaded {SHA}" in err
    assert "sha256 setting of this download in config.yaml" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no file, no pin, no temp file
    assert server.requests == ["/w.pt"]  # a mismatch is not retried


def test_first_download_pins_and_the_next_run_verifies(server, tmp_path, capsys):
    out, url = tmp_path / "w.pt", f"{server.url}/w.pt"
    with pytest.raises(UserError, match="no sha256 to verify .*sha256 setting of this download in config.yaml.*"
                                        "--allow-unpinned"):
        fetch(url, out)
    assert list(tmp_path.iterdir()) == [] and server.requests == []  # refused before downloading
    assert fetch(url, out, allow_unpinned=True) == SHA
    assert f"sha256 {SHA}" in capsys.readouterr().err  # the digest to pin
    assert (tmp_path / "w.pt.sha256").read_text() == f"{SHA}  w.pt\n" and out.read_bytes() == DATA

    out.unlink()  # as Snakemake does before rerunning the rule: the pin file stays
    assert fetch(url, out) == SHA and out.read_bytes() == DATA  # unpinned run not needed any more
    out.unlink()
    server.files["/w.pt"] = b"changed upstream"
    with pytest.raises(UserError, match=f"expected {SHA} \\(the pin .*w.pt.sha256 of an earlier download\\), "
                                        "downloaded .*delete .*w.pt.sha256 and rerun with --allow-unpinned"):
        fetch(url, out)
    assert not out.exists() and (tmp_path / "w.pt.sha256").read_text() == f"{SHA}  w.pt\n"
    with pytest.raises(UserError, match="mismatch"):  # --allow-unpinned does not override an existing pin
        fetch(url, out, allow_unpinned=True)


def test_a_verified_file_is_not_downloaded_again_and_a_wrong_one_is(server, tmp_path):
    out, url = tmp_path / "w.pt", f"{server.url}/w.pt"
    assert fetch(url, out, SHA) == SHA and len(server.requests) == 1
    assert fetch(url, out, SHA) == SHA and fetch(url, out) == SHA and len(server.requests) == 1
    out.write_bytes(b"truncated")
    assert fetch(url, out) == SHA and out.read_bytes() == DATA and len(server.requests) == 2  # against the pin
    out.write_bytes(b"truncated")
    server.files["/w.pt"] = b"changed upstream"
    with pytest.raises(UserError, match="mismatch"):
        fetch(url, out)
    assert not out.exists()  # a file that does not match its pin is not left behind either


def test_a_hand_download_is_pinned_with_sha256sum_or_allow_unpinned(server, tmp_path):
    out, url = tmp_path / "w.pt", f"{server.url}/w.pt"
    out.write_bytes(DATA)
    (tmp_path / "w.pt.sha256").write_text(f"{SHA}  {out}\n")  # `sha256sum {out} > {out}.sha256`
    assert fetch(url, out) == SHA and server.requests == []
    (tmp_path / "w.pt.sha256").unlink()
    assert fetch(url, out, allow_unpinned=True) == SHA and server.requests == []
    assert (tmp_path / "w.pt.sha256").read_text() == f"{SHA}  w.pt\n"
    (tmp_path / "w.pt.sha256").write_text("not a digest\n")
    with pytest.raises(UserError, match="w.pt.sha256: 'not' is not a sha256 digest"):
        fetch(url, out)


def test_network_errors_are_retried_then_one_clear_error(server, tmp_path):
    out, url = tmp_path / "w.pt", f"{server.url}/w.pt"
    server.fail = 2  # two 503s, then the file
    assert fetch(url, out, SHA) == SHA and server.requests == ["/w.pt"] * 3
    out.unlink()
    server.fail, server.requests = 99, []
    with pytest.raises(UserError, match=f"{url}: download failed \\(HTTPError: 503.*download it by hand and pin "
                                        f"it: `curl -L -o {out} {url} && sha256sum {out} > {out}.sha256`"):
        fetch(url, out, SHA)
    assert server.requests == ["/w.pt"] * (fetch_mod.RETRIES + 1) and _leftovers(tmp_path, out) == []
    assert not out.exists()
    server.fail, server.requests = 0, []
    with pytest.raises(UserError, match="download failed \\(HTTPError: 404"):
        fetch(f"{server.url}/missing.pt", out, SHA)
    assert server.requests == ["/missing.pt"]  # a 404 is not retried


def test_unreachable_host_is_one_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/w.pt"
    out = tmp_path / "w.pt"
    assert main(["fetch", "--url", url, "--out", str(out), "--sha256", SHA]) == 2
    err = capsys.readouterr().err
    assert f"par fetch: error: {url}: download failed (ConnectionError" in err and f"curl -L -o {out}" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_sha256_flag_is_refused(tmp_path):
    with pytest.raises(UserError, match="--sha256: 'abc' is not a sha256 digest"):
        fetch("http://127.0.0.1:9/w.pt", tmp_path / "w.pt", "abc")


def test_a_url_requests_cannot_fetch_is_not_retried(tmp_path, capsys):
    with pytest.raises(UserError, match="file:///w.pt: download failed \\(InvalidSchema"):
        fetch("file:///w.pt", tmp_path / "w.pt", SHA)  # neither pooch nor requests reads file:// URLs
    assert "retrying" not in capsys.readouterr().err and list(tmp_path.iterdir()) == []
