#!/usr/bin/env python3
"""Reference hasher for bench/run.sh: the plain "walk, read, SHA-256" baseline.

Walks ROOT without following symlinks, then hashes every regular file with
hashlib.sha256 on a thread pool (hashlib releases the GIL for buffers larger
than 2 KiB, so the threads really run in parallel), reading 1 MiB at a time
into a reused per-thread buffer. Nothing is stored or compared; it prints one
line: "files=N bytes=B errors=E".

Usage: refhash.py ROOT [--threads N] [--list]
  --list  also print "<hex>  <path>" for every file (for spot checks)
"""

import argparse
import hashlib
import os
import sys
import threading
from multiprocessing.pool import ThreadPool

CHUNK = 1 << 20
_local = threading.local()


def regular_files(root):
    """Every regular file under root (lstat semantics: symlinks are not followed)."""
    stack = [root]
    out = []
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError as e:
            print(f"refhash: {d}: {e}", file=sys.stderr)
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        out.append(e.path)
                except OSError:
                    pass
    return out


def hash_one(path):
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
        _local.view = memoryview(buf)
    view = _local.view
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                h.update(view[:k])
                n += k
    except OSError as e:
        return path, None, 0, str(e)
    return path, h.hexdigest(), n, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()

    files = regular_files(a.root)
    total = errors = 0
    with ThreadPool(max(1, a.threads)) as pool:
        for path, digest, n, err in pool.imap_unordered(hash_one, files, chunksize=64):
            if err is not None:
                errors += 1
                print(f"refhash: {path}: {err}", file=sys.stderr)
                continue
            total += n
            if a.list:
                print(f"{digest}  {path}")
    print(f"files={len(files) - errors} bytes={total} errors={errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
