"""
Docker images built offline for tests and the lab.

No registry is reachable, so images are root filesystem tarballs built from
what is installed on this machine and fed to ``IDockerClient.import_image``.
Built tarballs are cached under ``DEFAULT_CACHE_DIR``, keyed by a hash of
everything that goes into them, so a second run only imports.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from typing import Callable, Sequence

from twisted.internet.threads import deferToThreadPool

from flocker_async.model import DockerImage

__all__ = [
    "DEFAULT_CACHE_DIR",
    "BUSYBOX_IMAGE",
    "BUSYBOX_CHANGES",
    "BUSYBOX_APPLETS",
    "cached_tarball",
    "busybox_tarball",
    "load_busybox_image",
]

DEFAULT_CACHE_DIR = "/var/cache/flocker-async"
BUSYBOX_BINARY = "/bin/busybox"  # from busybox-static: no libc needed
BUSYBOX_IMAGE = DockerImage("flocker-lab/busybox", "latest")

BUSYBOX_APPLETS = (
    "sh", "ash", "httpd", "nc", "sleep", "cat", "echo", "ls", "wget", "mkdir",
    "rm", "cp", "mv", "touch", "ps", "kill", "env", "true", "false", "test",
    "[", "id", "hostname", "date", "grep", "sed", "head", "tail", "wc",
    "printf", "sync", "df", "du", "ip", "netstat", "uname", "awk", "tr",
)

# The default command serves $HTTP_ROOT on $HTTP_PORT.  The trap matters: a
# PID 1 without a SIGTERM handler ignores SIGTERM, and `docker stop` would
# wait out its whole timeout before SIGKILL.
SERVE_SCRIPT = b"""\
#!/bin/sh
trap 'exit 0' TERM INT
httpd -f -p "${HTTP_PORT:-80}" -h "${HTTP_ROOT:-/data}" &
wait
"""
SERVE_PATH = "etc/flocker-lab/serve"

BUSYBOX_CHANGES = (
    "ENV PATH=/bin",
    'CMD ["/bin/sh", "/%s"]' % (SERVE_PATH,),
)

# Part of every cache key: bump when the tarball layout changes.
_FORMAT_VERSION = 1


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_tarball(cache_dir: str, name: str, inputs: dict,
                   build: Callable[[str], None]) -> str:
    """
    The path of ``name``'s tarball for ``inputs`` (JSON-able), calling
    ``build(path)`` to write it when it is not cached yet.  The tarball
    appears atomically, so an interrupted build leaves nothing half-made.
    """
    key = hashlib.sha256(json.dumps(
        {"format": _FORMAT_VERSION, "inputs": inputs},
        sort_keys=True).encode("utf-8")).hexdigest()[:20]
    directory = os.path.join(cache_dir, "images")
    path = os.path.join(directory, "%s-%s.tar" % (name, key))
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".%s-" % (name,), dir=directory)
    os.close(fd)
    try:
        build(partial)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
    return path


def _entry(name, kind, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0  # reproducible bytes for equal inputs
    return info


def _write_busybox_rootfs(busybox: str, applets: Sequence[str], path: str):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for directory in ("bin", "etc", "etc/flocker-lab", "tmp", "data",
                          "proc", "sys", "dev", "root"):
            mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(_entry(directory, tarfile.DIRTYPE, mode))
        binary = _entry("bin/busybox", tarfile.REGTYPE)
        binary.size = os.path.getsize(busybox)
        with open(busybox, "rb") as f:
            tar.addfile(binary, f)
        for applet in applets:
            link = _entry("bin/" + applet, tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        script = _entry(SERVE_PATH, tarfile.REGTYPE)
        script.size = len(SERVE_SCRIPT)
        tar.addfile(script, io.BytesIO(SERVE_SCRIPT))


def busybox_tarball(cache_dir: str = DEFAULT_CACHE_DIR,
                    busybox: str = BUSYBOX_BINARY,
                    applets: Sequence[str] = BUSYBOX_APPLETS) -> str:
    """
    The path of a root filesystem tarball with a static busybox, its
    applets as symlinks and the serve script.  Blocking file work: call it
    in a thread (``load_busybox_image`` does).
    """
    if not os.path.exists(busybox):
        raise FileNotFoundError(
            "%s not found: install the busybox-static package" % (busybox,))
    inputs = {
        "busybox": _file_digest(busybox),
        "applets": list(applets),
        "serve": SERVE_SCRIPT.decode("ascii"),
    }
    return cached_tarball(
        cache_dir, "busybox", inputs,
        lambda path: _write_busybox_rootfs(busybox, applets, path))


def load_busybox_image(reactor, client, cache_dir: str = DEFAULT_CACHE_DIR,
                       image: DockerImage = BUSYBOX_IMAGE):
    """
    Build (or reuse) the busybox tarball off the reactor thread and import it
    through ``client`` (an ``IDockerClient``) as ``image``.
    """
    d = deferToThreadPool(reactor, reactor.getThreadPool(),
                          busybox_tarball, cache_dir)
    d.addCallback(lambda path: client.import_image(
        path, image, changes=BUSYBOX_CHANGES))
    return d
