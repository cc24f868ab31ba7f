"""The IU X-ray download helper, offline: a local HTTP server in a thread plays Open-i.

The reports archive served is the real one (the copy inside the torchxrayvision wheel, whose
SHA-256 is the pinned value); the image archive is a small fake with real Open-i file names.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from course_utils import download
from course_utils.data import find_iu_reports_archive, load_iu_xray_dataset

# images of the first IU reports (uids 1-4; report 3 has no FINDINGS section, so it is skipped)
IMAGE_NAMES = ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png", "CXR2_IM-0652-1001.png",
               "CXR3_IM-1384-1001.png", "CXR4_IM-2050-1001.png"]  # fmt: skip


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_png_archive() -> bytes:
    """A tgz laid out like NLMCXR_png.tgz: ./<name>.png members plus ./Thumbs.db."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = [(f"./{n}", _png(40 * i)) for i, n in enumerate(IMAGE_NAMES)]
        for name, payload in members + [("./Thumbs.db", b"\0" * 64)]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class FakeOpenI:
    """Files by URL path; honours ``Range`` unless told not to; can cut a transfer short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[dict] = []
        self.honour_range = True
        self.cut_after: int | None = None  # bytes of body to send before closing

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                name = self.path.rsplit("/", 1)[-1]
                fake.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if name not in fake.files:
                    self.send_error(404, "Not Found")
                    return
                body, start = fake.files[name], 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and fake.honour_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if fake.cut_after is not None:
                    payload = payload[: fake.cut_after]
                self.wfile.write(payload)
                fake.requests[-1]["sent"] = len(payload)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        return Handler


@pytest.fixture
def openi():
    reports = find_iu_reports_archive().read_bytes()
    fake = FakeOpenI({"NLMCXR_png.tgz": fake_png_archive(), "NLMCXR_reports.tgz": reports})
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/imgs/collections/"
    fake.png_sha = hashlib.sha256(fake.files["NLMCXR_png.tgz"]).hexdigest()
    yield fake
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/imgs/collections/"


def test_download_verifies_extracts_and_loads(openi, tmp_path: Path):
    paths = download.download_iu_xray(
        tmp_path / "iu", base_url=openi.url, sha256={"images": openi.png_sha}, progress=False
    )
    assert paths == {"root": tmp_path / "iu", "images": tmp_path / "iu" / "images",
                     "reports": tmp_path / "iu" / "reports"}  # fmt: skip
    assert sorted(p.name for p in paths["images"].iterdir() if p.suffix == ".png") == sorted(
        IMAGE_NAMES
    )
    assert not (paths["images"] / "Thumbs.db").exists()
    assert len(list((paths["reports"] / "ecgen-radiology").glob("*.xml"))) == 3955
    iu = load_iu_xray_dataset(paths["images"], reports=paths["reports"])
    assert [m["uid"] for m in iu["metadata"]] == ["1", "2", "4"]
    assert iu["metadata"][0]["image_id"] == "1_IM-0001-3001"
    # the real reports archive matched the pinned checksum (it was not overridden)
    record = (tmp_path / "iu" / "NLMCXR_reports.tgz.sha256").read_text()
    assert download.IU_ARCHIVES["reports"].sha256 in record


def test_a_second_run_makes_no_request(openi, tmp_path: Path):
    kwargs = {"base_url": openi.url, "sha256": {"images": openi.png_sha}, "progress": False}
    download.download_iu_xray(tmp_path, **kwargs)
    assert len(openi.requests) == 2
    download.download_iu_xray(tmp_path, **kwargs)
    assert len(openi.requests) == 2


def test_resume_requests_only_the_missing_bytes(openi, tmp_path: Path):
    body = openi.files["NLMCXR_png.tgz"]
    half = len(body) // 2
    (tmp_path / "NLMCXR_png.tgz.part").write_bytes(body[:half])
    out = download.download_file(
        openi.url + "NLMCXR_png.tgz", tmp_path / "NLMCXR_png.tgz", openi.png_sha, progress=False
    )
    assert openi.requests == [{"path": "/imgs/collections/NLMCXR_png.tgz",
                               "range": f"bytes={half}-", "sent": len(body) - half}]  # fmt: skip
    assert out.read_bytes() == body
    assert not (tmp_path / "NLMCXR_png.tgz.part").exists()


def test_a_server_that_ignores_range_restarts_from_zero(openi, tmp_path: Path):
    body = openi.files["NLMCXR_png.tgz"]
    (tmp_path / "NLMCXR_png.tgz.part").write_bytes(b"stale bytes from another file")
    openi.honour_range = False
    out = download.download_file(
        openi.url + "NLMCXR_png.tgz", tmp_path / "NLMCXR_png.tgz", openi.png_sha, progress=False
    )
    assert out.read_bytes() == body


def test_a_cut_transfer_says_run_again_and_the_next_run_resumes(openi, tmp_path: Path):
    body = openi.files["NLMCXR_png.tgz"]
    cut = len(body) // 3
    openi.cut_after = cut
    url, dest = openi.url + "NLMCXR_png.tgz", tmp_path / "NLMCXR_png.tgz"
    with pytest.raises(download.DownloadError, match="run the command again to resume"):
        download.download_file(url, dest, openi.png_sha, progress=False)
    assert (tmp_path / "NLMCXR_png.tgz.part").stat().st_size == cut
    openi.cut_after = None
    assert download.download_file(url, dest, openi.png_sha, progress=False).read_bytes() == body
    assert openi.requests[-1]["range"] == f"bytes={cut}-"


def test_a_complete_part_file_is_finished_without_downloading(openi, tmp_path: Path):
    body = openi.files["NLMCXR_png.tgz"]
    (tmp_path / "NLMCXR_png.tgz.part").write_bytes(body)
    out = download.download_file(
        openi.url + "NLMCXR_png.tgz", tmp_path / "NLMCXR_png.tgz", openi.png_sha, progress=False
    )
    assert out.read_bytes() == body
    assert openi.requests[0]["range"] == f"bytes={len(body)}-"  # answered 416: nothing to send


def test_checksum_mismatch_is_an_error_and_nothing_is_extracted(openi, tmp_path: Path):
    with pytest.raises(download.ChecksumError) as caught:
        download.download_iu_xray(
            tmp_path, parts=["images"], base_url=openi.url, progress=False
        )  # the fake archive cannot match the pinned SHA-256 of the real one
    message = str(caught.value)
    assert download.IU_ARCHIVES["images"].sha256 in message
    assert openi.png_sha in message
    assert (tmp_path / "NLMCXR_png.tgz.corrupt").read_bytes() == openi.files["NLMCXR_png.tgz"]
    assert not (tmp_path / "NLMCXR_png.tgz").exists()
    assert not (tmp_path / "images").exists()


def test_no_network_gives_a_clear_message(tmp_path: Path):
    with pytest.raises(download.DownloadError) as caught:
        download.download_iu_xray(tmp_path, base_url=_closed_port_url(), progress=False)
    message = str(caught.value)
    assert message.startswith("cannot reach 127.0.0.1")
    assert "No network here?" in message and 'PROFILE="tiny"' in message
    assert str(tmp_path / "NLMCXR_png.tgz") in message  # where to put a hand-carried copy


def test_a_hand_carried_archive_is_verified_and_extracted_offline(openi, tmp_path: Path):
    (tmp_path / "NLMCXR_png.tgz").write_bytes(openi.files["NLMCXR_png.tgz"])
    paths = download.download_iu_xray(
        tmp_path, ["images"], _closed_port_url(), {"images": openi.png_sha}, progress=False
    )
    assert len(list(paths["images"].glob("*.png"))) == len(IMAGE_NAMES)
    assert openi.requests == []


def test_http_errors_name_the_status(openi, tmp_path: Path):
    with pytest.raises(download.DownloadError, match="HTTP 404 Not Found"):
        download.download_file(openi.url + "missing.tgz", tmp_path / "x.tgz", progress=False)


def test_extract_refuses_unsafe_paths_and_non_archives(tmp_path: Path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    with pytest.raises(ValueError, match="unsafe member path '../escape.png'"):
        download.extract_archive(evil, tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.png").exists()
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"<html>Service unavailable</html>")
    with pytest.raises(ValueError, match="not a readable tar.gz archive"):
        download.extract_archive(junk, tmp_path / "out", progress=False)


def test_default_location_follows_course_data_dir(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "drive"))
    assert download.default_iu_dir() == (tmp_path / "drive" / "iu_xray").resolve()


def test_cli(openi, tmp_path: Path, capsys):
    argv = ["--dest", str(tmp_path), "--base-url", openi.url, "--only", "images",
            "--sha256-images", openi.png_sha, "--no-progress"]  # fmt: skip
    assert download.main(argv) == 0
    assert f"images   {tmp_path / 'images'}" in capsys.readouterr().out
    offline = ["--dest", str(tmp_path / "b"), "--base-url", _closed_port_url(), "--no-progress"]
    assert download.main(offline) == 1
    assert "download-iu: cannot reach" in capsys.readouterr().err
