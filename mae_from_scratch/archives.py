"""Archives of data: a .tar/.tar.gz of an ImageFolder tree is extracted once into a cache.

:func:`archive_root` turns an archive into a folder that
:func:`~mae_from_scratch.data.build_dataset` reads like any other;
:func:`data_cache_dir` is also where torchvision's downloads go.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from .data_error import DataError

# An archive whose one top-level folder has one of these names holds the splits themselves.
SPLIT_FOLDERS = ("train", "val", "test")


def data_cache_dir() -> Path:
    """Where archives are extracted and downloads go: ``$MAE_DATA_CACHE`` or
    ``~/.cache/mae_from_scratch``."""
    return Path(os.environ.get("MAE_DATA_CACHE", Path.home() / ".cache" / "mae_from_scratch")).expanduser()


def is_archive(path) -> bool:
    return str(path).endswith((".tar", ".tar.gz", ".tgz"))


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    target = (dest / member.name).resolve()
    if member.name.startswith("/") or not target.is_relative_to(dest.resolve()):
        raise DataError(f"refusing to extract {member.name!r}: it would be written outside {dest}")
    if member.issym() or member.islnk():
        raise DataError(f"refusing to extract {member.name!r}: links are not allowed in a data archive")


def extract_archive(path, cache_dir=None) -> Path:
    """Extract ``path`` (.tar, .tar.gz, .tgz) once and return the extraction folder.

    The folder is named after the archive and a hash of its absolute path, size
    and modification time, so a changed archive is extracted again.  It is
    extracted into a private folder that is renamed into place when complete (with
    a marker file inside), so an interrupted extraction is redone and two processes
    extracting at once never see each other's half-written files.  Members that would land outside the folder (``../x``, absolute
    paths) or are links are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = path.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    dest = Path(cache_dir) if cache_dir is not None else data_cache_dir()
    dest = dest / f"{stem}-{key}"
    if (dest / ".extracted").is_file():
        return dest
    # Extracted into a private folder, then renamed into place in one step: two processes that
    # extract at once (two notebooks, two test workers) never read each other's half-written files.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, tmp)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python < 3.11.4: members were checked above
                tar.extractall(tmp, members=members)
        (tmp / ".extracted").write_text(str(path.resolve()))
        if dest.is_dir() and not (dest / ".extracted").is_file():
            shutil.rmtree(dest)  # left by an extraction that was cut short
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (dest / ".extracted").is_file():
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # a cut-off .gz ends in EOFError
        raise DataError(f"cannot read archive {path} (truncated or corrupted?): {type(e).__name__}: {e}; "
                        "download or copy it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def archive_root(path) -> Path:
    """Extract an archive and return its data root: its single top-level folder if it
    has exactly one (``cifar10/`` in cifar10-jpeg.tar.gz), else the extraction folder."""
    dest = extract_archive(path)
    top = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(top) == 1 and top[0].is_dir() and top[0].name not in SPLIT_FOLDERS:
        return top[0]
    return dest  # the split folders themselves are at the top (or there are several folders)
