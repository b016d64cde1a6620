"""The one way a name that someone else chose becomes a local path.

Object keys in a bucket, file names in a checkpoint manifest and the path part of `pvc://claim/path` are written by
whoever can write the bucket or the spec. Joined naively, `../` in one of them lands a file anywhere the process can
write (a later resume then unpickles or imports it). Every such join goes through `inside`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .errors import StorageError

CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a PersistentVolumeClaim name (DNS-1123 subdomain)


def inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused unless it stays under `root`: no absolute path, no `..`, `.` or empty part, no
    backslash or NUL, and no symlink on the way that leads out. `what` names where the name came from."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise StorageError(f"{what}: refusing the path {relative!r} (empty, or with a backslash or NUL)")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in relative.split("/")):
        raise StorageError(f"{what}: refusing the path {relative!r}: it must be relative, without '..' or '.' "
                           "parts, so that it stays inside " + str(root))
    path = root.joinpath(*pure.parts)
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):
        raise StorageError(f"{what}: refusing the path {relative!r}: a symlink leads it out of {root}")
    return path


def claim_path(root: Path, claim_and_path: str, uri: str) -> Path:
    """`claim/sub/path` (from `pvc://claim/sub/path`) under the directory where the claims are mounted."""
    claim, _, rest = claim_and_path.partition("/")
    if not CLAIM.match(claim):
        raise StorageError(f"{uri}: {claim!r} is not a PersistentVolumeClaim name (pvc://CLAIM/path, lower-case "
                           "letters, digits, '-' and '.')")
    base = root / claim
    rest = rest.strip("/")
    return inside(base, rest, uri) if rest else base
