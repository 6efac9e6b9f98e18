"""modules/hashes.py: sha256(filename, title) with a cache keyed by title and checked by mtime (the webui keeps it in
cache.json); sha256_from_cache never computes."""
import hashlib
import os

from modules import shared

cache = {}
computed = []  # filenames hashed, so tests can see what was computed


def calculate_sha256(filename):
    digest = hashlib.sha256()
    with open(filename, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    try:
        ondisk_mtime = os.path.getmtime(filename)
    except FileNotFoundError:
        return None
    hit = cache.get(title)
    if hit is None or ondisk_mtime > hit.get("mtime", 0) or hit.get("sha256") is None:
        return None
    return hit["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    value = sha256_from_cache(filename, title, use_addnet_hash)
    if value is not None:
        return value
    if shared.cmd_opts.no_hashing:
        return None
    value = calculate_sha256(filename)
    computed.append(filename)
    cache[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    return value
