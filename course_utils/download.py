"""Download the public IU X-ray collection (Open-i) for self-learners on the ``colab`` profile.

    python -m course_utils download-iu [--dest DIR] [--only images|reports]

Two archives from NLM's Open-i service (licence CC BY-NC-ND 4.0, cite Demner-Fushman et al.,
JAMIA 2016):

* ``NLMCXR_png.tgz``: 7,470 PNG images, ~1.36 GB, named ``CXR<uid>_IM-xxxx-xxxx.png``;
* ``NLMCXR_reports.tgz``: 3,955 XML reports (``ecgen-radiology/<uid>.xml``), 1.1 MB.

Each download is resumable (HTTP ``Range`` on a ``.part`` file: run the command again after a
dropped connection), shows a tqdm bar, is checked against a pinned SHA-256 and then extracted
under the data location: ``--dest`` or ``$COURSE_DATA_DIR/iu_xray`` (see
:func:`course_utils.config.data_cache_dir`). Load the result with::

    from course_utils import data
    iu = data.load_iu_xray_dataset(root / "images", reports=root / "NLMCXR_reports.tgz")

The pinned checksums come from public records of complete downloads (the reports' value also
equals the copy inside the torchxrayvision wheel). If NLM republishes an archive, the mismatch
error shows the new value; pass it with ``--sha256-images`` after checking the file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from .config import data_cache_dir

OPENI_BASE_URL = "https://openi.nlm.nih.gov/imgs/collections/"
CHUNK_BYTES = 1 << 20
_SKIPPED_MEMBERS = {"Thumbs.db", ".DS_Store"}  # the PNG archive carries a Windows thumbnail db


class DownloadError(RuntimeError):
    """The network is unreachable or the server refused; the message says what to do."""


class ChecksumError(ValueError):
    """A downloaded file's SHA-256 differs from the expected one."""


@dataclass(frozen=True)
class Archive:
    """One Open-i archive.

    Attributes:
        part: ``"images"`` or ``"reports"``.
        filename: file name on the server and on disk.
        sha256: expected SHA-256 (``None``: not verified).
        size: expected size in bytes (progress-bar total when the server sends none).
        folder: sub-folder of the data location it is extracted into.
    """

    part: str
    filename: str
    sha256: str | None
    size: int | None
    folder: str


IU_ARCHIVES: dict[str, Archive] = {
    "images": Archive(
        "images",
        "NLMCXR_png.tgz",
        "baf3abfe19ba5d58efe69002aed1e71aa2e6d5efb3238db9adcac210ad44bdf2",
        1_360_814_128,
        "images",
    ),
    "reports": Archive(
        "reports",
        "NLMCXR_reports.tgz",
        "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a",
        1_112_632,
        "reports",
    ),
}


def default_iu_dir() -> Path:
    """``$COURSE_DATA_DIR/iu_xray`` (default ``data/cache/iu_xray`` in the repository)."""
    return data_cache_dir() / "iu_xray"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file, read in chunks (the image archive is 1.4 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _no_network(url: str, dest: Path, err: BaseException) -> DownloadError:
    host = urlparse(url).netloc or url
    reason = getattr(err, "reason", err)
    return DownloadError(
        f"cannot reach {host} ({reason}). No network here? Either\n"
        f"  - download {url} on a machine with internet access and copy it to {dest} "
        "(this command then verifies and extracts it), or\n"
        "  - behind a proxy, set HTTPS_PROXY and run again, or\n"
        '  - stay offline: PROFILE="tiny" runs the whole course on the embedded dataset.'
    )


def _open(url: str, offset: int, timeout: float, dest: Path):  # noqa: ANN202 - HTTPResponse
    """Open ``url`` (from byte ``offset``); ``None`` when the server says the range is done."""
    headers = {"User-Agent": "course-utils (IU X-ray download helper)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the .part file already holds every byte
            return None
        raise DownloadError(f"{url}: the server answered HTTP {err.code} {err.reason}") from err
    except (TimeoutError, urllib.error.URLError, ConnectionError) as err:
        raise _no_network(url, dest, err) from err


def _total_size(response, offset: int) -> int | None:  # noqa: ANN001
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+)", content_range)
    if match:
        if int(match.group(1)) != offset:
            raise DownloadError(f"the server resumed at byte {match.group(1)}, not {offset}")
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    expected_size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run.

    Args:
        url: http(s) URL.
        dest: final file path; the download goes to ``<dest>.part`` and is renamed once
            complete and verified.
        sha256: expected hex SHA-256; ``None`` skips verification (the value is still
            recorded in ``<dest>.sha256``).
        expected_size: bytes, for the progress bar when the server sends no length.
        progress: show a tqdm bar.
        timeout: seconds to wait for the server on each read.

    Returns:
        ``dest``.

    Raises:
        DownloadError: no network, an HTTP error, or a transfer cut short (run again to resume).
        ChecksumError: the complete file has another SHA-256 (it is kept as ``<dest>.corrupt``).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists():
        _verify(dest, sha256, cached=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout, dest)
    if response is not None:
        with response:
            if offset and response.status == 200:  # the server ignored Range: start over
                offset = 0
            total = _total_size(response, offset)  # None: the server sent no length
            with (
                part.open("ab" if offset else "wb") as handle,
                tqdm(total=total or expected_size, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                     disable=not progress) as bar,
            ):  # fmt: skip
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        handle.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as err:
                    raise DownloadError(
                        f"{url}: the transfer stopped at {handle.tell():,} bytes ({err}); "
                        "run the command again to resume"
                    ) from err
        got = part.stat().st_size
        if total is not None and got != total:
            raise DownloadError(
                f"{url}: got {got:,} of {total:,} bytes; run the command again to resume"
            )
    _verify(part, sha256, cached=False, final=dest)
    part.rename(dest)
    return dest


def _verify(path: Path, sha256: str | None, cached: bool, final: Path | None = None) -> None:
    """Check ``path`` against ``sha256`` and record the value in ``<final>.sha256``.

    A file verified before (its ``.sha256`` record matches size and expected value) is not
    hashed again.
    """
    final = final or path
    record = final.with_name(final.name + ".sha256")
    size = path.stat().st_size
    if cached and record.exists():
        saved = json.loads(record.read_text())
        if saved.get("size") == size and (sha256 is None or saved.get("sha256") == sha256):
            return
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256.lower():
        corrupt = final.with_name(final.name + ".corrupt")
        path.replace(corrupt)
        record.unlink(missing_ok=True)
        raise ChecksumError(
            f"{final.name}: SHA-256 mismatch\n  expected: {sha256}\n  got:      {actual}\n"
            f"The file was moved to {corrupt}. A broken transfer: delete it and run again. "
            "If NLM republished the archive, check the file and pass the new value "
            "(--sha256-images / --sha256-reports)."
        )
    record.write_text(json.dumps({"sha256": actual, "size": size}))


def extract_archive(
    archive: str | os.PathLike, into: str | os.PathLike, progress: bool = True
) -> int:
    """Extract the regular files of a tar(.gz) archive under ``into``; returns the count.

    Members are written one by one (no links, devices or absolute paths; ``..`` is refused),
    ``./`` prefixes are dropped and Windows' ``Thumbs.db`` is skipped.

    Raises:
        ValueError: not a tar archive, or a member escapes ``into``.
    """
    from tqdm.auto import tqdm

    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tqdm(tar, desc=f"extracting {Path(archive).name}", unit=" files",
                               disable=not progress):  # fmt: skip
                if not member.isfile():
                    continue
                parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
                if not parts or parts[0] == "/" or ".." in parts:
                    raise ValueError(f"{archive}: unsafe member path {member.name!r}")
                if parts[-1] in _SKIPPED_MEMBERS:
                    continue
                target = into.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                with source, target.open("wb") as handle:
                    shutil.copyfileobj(source, handle)
                count += 1
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{archive}: not a readable tar.gz archive ({err}); delete it and download again"
        ) from err
    return count


def download_iu_xray(
    dest: str | os.PathLike | None = None,
    parts: Iterable[str] = ("images", "reports"),
    base_url: str = OPENI_BASE_URL,
    sha256: dict[str, str | None] | None = None,
    extract: bool = True,
    remove_archives: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Download, verify and extract the IU X-ray archives; safe to run again (nothing is redone).

    Args:
        dest: data location (default :func:`default_iu_dir`, i.e. ``$COURSE_DATA_DIR/iu_xray``).
        parts: ``"images"`` and/or ``"reports"``.
        base_url: folder URL holding the archives (default Open-i's).
        sha256: per-part override of the pinned checksum (``None`` value: do not verify).
        extract: unpack into ``dest/images`` and ``dest/reports``.
        remove_archives: delete each archive once extracted (keeps ~1.4 GB free).
        progress: tqdm bars.
        timeout: seconds to wait for the server on each read.

    Returns:
        ``{"root": dest, part: folder or archive path}``.

    Raises:
        ValueError: unknown part.
        DownloadError / ChecksumError: see :func:`download_file`.
    """
    root = Path(dest) if dest is not None else default_iu_dir()
    overrides = sha256 or {}
    result: dict[str, Path] = {"root": root}
    for part in parts:
        if part not in IU_ARCHIVES:
            raise ValueError(f"unknown IU X-ray part {part!r}; choose from {sorted(IU_ARCHIVES)}")
        spec = IU_ARCHIVES[part]
        expected = overrides[part] if part in overrides else spec.sha256
        archive = root / spec.filename
        folder = root / spec.folder
        marker = folder / f".extracted-{spec.filename}.json"
        if extract and marker.exists():
            done = json.loads(marker.read_text())
            if expected is None or done.get("sha256") == expected:
                result[part] = folder
                continue
        url = base_url.rstrip("/") + "/" + spec.filename
        download_file(url, archive, expected, spec.size, progress, timeout)
        if not extract:
            result[part] = archive
            continue
        count = extract_archive(archive, folder, progress)
        digest = json.loads(archive.with_name(archive.name + ".sha256").read_text())["sha256"]
        marker.write_text(json.dumps({"sha256": digest, "files": count}))
        if remove_archives:
            archive.unlink()
        result[part] = folder
    return result


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``download-iu`` command's options (shared by ``python -m course_utils download-iu``)."""
    parser.add_argument("--dest", type=Path, default=None,
                        help="data location (default $COURSE_DATA_DIR/iu_xray)")  # fmt: skip
    parser.add_argument("--only", choices=sorted(IU_ARCHIVES), action="append",
                        help="download only this part (repeatable)")  # fmt: skip
    parser.add_argument("--base-url", default=OPENI_BASE_URL)
    for part in IU_ARCHIVES:
        parser.add_argument(f"--sha256-{part}", default=None,
                            help="expected SHA-256 ('none': do not verify)")  # fmt: skip
    parser.add_argument("--no-extract", action="store_true")
    parser.add_argument("--remove-archives", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Download with parsed :func:`add_arguments` options: 0, or 1 with the reason on stderr."""
    overrides: dict[str, str | None] = {}
    for part in IU_ARCHIVES:
        value = getattr(args, f"sha256_{part}")
        if value is not None:
            overrides[part] = None if value.lower() == "none" else value
    try:
        paths = download_iu_xray(
            args.dest,
            args.only or list(IU_ARCHIVES),
            args.base_url,
            overrides,
            extract=not args.no_extract,
            remove_archives=args.remove_archives,
            progress=not args.no_progress,
        )
    except (DownloadError, ChecksumError, ValueError) as err:
        print(f"download-iu: {err}", file=sys.stderr)
        return 1
    for part, path in paths.items():
        print(f"{part:<8} {path}")
    if "images" in paths and "reports" in paths and not args.no_extract:
        print(
            "load with: course_utils.data.load_iu_xray_dataset("
            f"'{paths['images']}', reports='{paths['reports']}')"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.download``: returns 0, or 1 with the reason on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils download-iu", description=__doc__.split("\n")[0]
    )
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
