"""Torch checkpoint files read within the bytes they hold. `torch.save` writes a zip archive whose entries are
stored, never compressed, so what loading allocates is bounded by the file's size; an archive with a compressed entry
(a 3 MB file that inflates to gigabytes), or one in torch's pre-1.6 layout (whose storages say their own sizes), is
refused before torch reads any of it."""

from __future__ import annotations

import zipfile
from pathlib import Path


def unbounded(path: Path) -> str | None:
    """Why reading this torch file could allocate past its size, or None when it cannot."""
    try:
        if not zipfile.is_zipfile(path):
            return "not a torch zip archive (torch writes one since 1.6; the older layout declares its own sizes)"
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.compress_type != zipfile.ZIP_STORED:
                    return (f"its entry {entry.filename!r} is compressed ({entry.compress_size:,} bytes inflating to "
                            f"{entry.file_size:,}); torch never compresses its entries")
    except (OSError, zipfile.BadZipFile) as exc:
        return f"not a readable archive ({type(exc).__name__})"
    return None
