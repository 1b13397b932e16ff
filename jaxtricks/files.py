"""Files written whole or not at all, and JSON that stays strict.

Layer 0: used by the data, training and command-line layers alike. A file is written into a
temporary file beside it, flushed to disk (``fsync``) and renamed over the destination with
``os.replace``, which is atomic on POSIX and Windows, so a reader (or a process killed during
the write) sees the old file or all of the new one. If anything fails (a full or read-only
disk), the temporary file is removed, the destination is left as it was and the ``OSError``
propagates.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "strict_json", "write_json"]

Content = bytes | str | Callable[[IO[bytes]], None]


def atomic_write(path: str | os.PathLike, content: Content) -> str:
    """Writes ``content`` to ``path`` so that readers see the old file or all of the new one.

    Args:
        path: the destination; its directory is created if missing.
        content: the bytes, a string (written as UTF-8), or a function that writes into the
            binary file it is given (e.g. ``lambda f: figure.savefig(f, format="png")``).

    Returns:
        ``path`` as a string.

    Raises:
        OSError: the directory cannot be created or written, or the disk is full; ``path`` is
            unchanged and no temporary file is left behind.

    Examples:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = atomic_write(os.path.join(tmp, "f.txt"), "abc")
        ...     sorted(os.listdir(tmp)), open(os.path.join(tmp, "f.txt")).read()
        (['f.txt'], 'abc')
    """
    if not (isinstance(content, bytes | str) or callable(content)):
        raise ValueError(
            f"content must be bytes, a string or a function of a file, got {type(content).__name__}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Mode 0o666 lets the umask decide the permissions, as for any new file.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode() if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return str(path)


def strict_json(value: Any) -> Any:
    """``value`` made ready for strict JSON: non-finite floats become ``None``, NumPy and JAX
    scalars and arrays become Python numbers and lists, tuples become lists, keys strings.

    Examples:
        >>> import numpy as np
        >>> strict_json({"loss": float("nan"), "acc": np.float32(0.5), "steps": (1, 2)})
        {'loss': None, 'acc': 0.5, 'steps': [1, 2]}
    """
    if hasattr(value, "__array__") and not isinstance(value, np.generic):
        return strict_json(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return strict_json(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any, *, indent: int = 1) -> str:
    """Writes ``strict_json(value)`` to ``path`` atomically (see :func:`atomic_write`).

    Examples:
        >>> import json, os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = write_json(os.path.join(tmp, "m.json"), {"loss": float("inf")})
        ...     json.load(open(path))
        {'loss': None}
    """
    text = json.dumps(strict_json(value), indent=indent, allow_nan=False)
    return atomic_write(path, text + "\n")
