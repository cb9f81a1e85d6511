"""Download and unpack an official archive: several mirrors, resumable, size/checksum verified, atomic.

The archive is downloaded to ``<downloads>/<file>.part`` (resumed with an HTTP Range request on a retry), verified
(size, and SHA-256 where known), renamed to ``<file>``, unzipped into a temporary folder beside the destination and
only then moved into place with one rename, so a broken download never leaves a half-written data set that loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    """A zip archive of a data set: its mirrors, expected size/checksum (``None`` = unknown), and top folder."""

    urls: tuple[str, ...]
    filename: str
    top_folder: str
    size: int | None = None
    sha256: str | None = None


ARCHIVES: dict[str, Archive] = {
    "modelnet40_off": Archive(
        ("http://modelnet.cs.princeton.edu/ModelNet40.zip",), "ModelNet40.zip", "ModelNet40", size=2_039_180_837
    ),
    "modelnet10_off": Archive(
        ("http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip",), "ModelNet10.zip", "ModelNet10"
    ),
    "modelnet40_normal_resampled": Archive(
        ("https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip",),
        "modelnet40_normal_resampled.zip",
        "modelnet40_normal_resampled",
    ),
    "modelnet40_ply_hdf5_2048": Archive(
        (
            "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip",
            "https://github.com/ma-xu/pointMLP-pytorch/releases/download/Modenet40_dataset/modelnet40_ply_hdf5_2048.zip",
        ),
        "modelnet40_ply_hdf5_2048.zip",
        "modelnet40_ply_hdf5_2048",
    ),
    "shapenetpart_txt": Archive(
        ("https://shapenet.cs.stanford.edu/media/shapenetcore_partanno_segmentation_benchmark_v0_normal.zip",),
        "shapenetcore_partanno_segmentation_benchmark_v0_normal.zip",
        "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    ),
    "shapenetpart_hdf5": Archive(
        ("https://shapenet.cs.stanford.edu/media/shapenet_part_seg_hdf5_data.zip",),
        "shapenet_part_seg_hdf5_data.zip",
        "hdf5_data",
    ),
}


class DownloadError(RuntimeError):
    """Every mirror failed; the message says where to put the files by hand."""


def _fetch(url: str, part: Path) -> None:
    """Append ``url``'s bytes to ``part`` (resuming from its size); raise if the transfer is incomplete."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        resumed = getattr(resp, "status", 200) == 206
        length = resp.headers.get("Content-Length")
        expected = (int(length) + (have if resumed else 0)) if length else None
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(resp, out, CHUNK)
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise OSError(f"incomplete transfer: {got} of {expected} bytes (run again to resume)")


def _verify(path: Path, archive: Archive) -> None:
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise OSError(f"size {size} != expected {archive.size}")
    if archive.sha256 is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        if h.hexdigest() != archive.sha256:
            raise OSError(f"SHA-256 {h.hexdigest()} != expected {archive.sha256}")


def download_archive(archive: Archive, downloads: Path) -> Path:
    """The verified archive file in ``downloads`` (fetched from the first mirror that works)."""
    downloads.mkdir(parents=True, exist_ok=True)
    final, part = downloads / archive.filename, downloads / f"{archive.filename}.part"
    if final.is_file():
        return final
    errors = []
    for url in archive.urls:
        try:
            log.info("downloading %s", url)
            _fetch(url, part)
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors; the .part is kept to resume
            errors.append(f"{url}: {e}")
            continue
        try:
            _verify(part, archive)
        except OSError as e:
            part.unlink()  # complete but wrong: start from scratch next time
            errors.append(f"{url}: {e}")
            continue
        os.replace(part, final)
        return final
    raise DownloadError(
        f"could not download {archive.filename} ({'; '.join(errors)}). Download it by hand from one of "
        f"{list(archive.urls)} into {downloads}/ (it is then used as is), or unzip it so that its "
        f"'{archive.top_folder}/' folder becomes the data root."
    )


def download_and_extract(archive: Archive, dest: Path, downloads: Path | None = None) -> Path:
    """Make ``dest`` hold the archive's top folder (downloaded, verified, unzipped, then moved in one rename)."""
    dest = Path(dest)
    zip_path = download_archive(archive, downloads or dest.parent / "downloads")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.extract-") as tmp:
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{zip_path}: not a valid zip archive ({e}); delete it and download again") from None
        top = Path(tmp) / archive.top_folder
        if not top.is_dir():
            raise DownloadError(f"{zip_path}: expected a top folder '{archive.top_folder}/' inside the archive")
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        os.replace(top, dest)
    return dest
