"""
Docker images built offline for tests and the lab.

No registry is reachable, so images are root filesystem tarballs built from
what is installed on this machine and fed to ``IDockerClient.import_image``.
Built tarballs are cached under ``DEFAULT_CACHE_DIR``, keyed by a hash of
everything that goes into them, so a second run only imports.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

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
    "MARIADB_IMAGE",
    "MARIADB_CHANGES",
    "MARIADB_ENTRYPOINT",
    "MARIADB_ENTRYPOINT_SCRIPT",
    "MARIADB_CONFIG",
    "find_mirror",
    "apt_sources",
    "mariadb_tarball",
    "cache_key",
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
    key = cache_key(inputs)
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


def cache_key(inputs: dict) -> str:
    """The short hash that names a tarball built from ``inputs``."""
    return hashlib.sha256(json.dumps(
        {"format": _FORMAT_VERSION, "inputs": inputs},
        sort_keys=True).encode("utf-8")).hexdigest()[:20]


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


# --- MariaDB ---------------------------------------------------------------------

MARIADB_IMAGE = DockerImage("flocker-lab/mariadb", "latest")
MARIADB_ENTRYPOINT = "/usr/local/bin/flocker-lab-mariadb"
MARIADB_SUITE = "bookworm"
MARIADB_PACKAGES = ("mariadb-server",)

# Starts MariaDB the way the official mysql image starts MySQL: the data
# directory is initialised when it is empty (a new volume), root@'%' gets
# MYSQL_ROOT_PASSWORD, and the server runs in the foreground as PID 1, where
# it shuts down cleanly on SIGTERM (docker stop).  The password reaches the
# client on stdin, never on a command line.
MARIADB_ENTRYPOINT_SCRIPT = br"""#!/bin/bash
set -eu
DATADIR=/var/lib/mysql
INIT_SOCKET=/run/mysqld/init.sock

say() { echo "flocker-lab/mariadb: $*" >&2; }

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"  # a command instead of the server, as in the official image
fi

mkdir -p "$DATADIR" /run/mysqld
chown mysql:mysql "$DATADIR" /run/mysqld

if [ ! -d "$DATADIR/mysql" ]; then
    if [ -z "${MYSQL_ROOT_PASSWORD:-}" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ]; then
        say "the database is uninitialized and no password option is given;"
        say "set MYSQL_ROOT_PASSWORD (or MYSQL_ALLOW_EMPTY_PASSWORD=yes)"
        exit 1
    fi
    say "initialising $DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=socket >/dev/null
    mariadbd --user=mysql --datadir="$DATADIR" --skip-networking \
        --socket="$INIT_SOCKET" &
    pid=$!
    for _ in $(seq 1 240); do
        if mariadb-admin --socket="$INIT_SOCKET" ping >/dev/null 2>&1; then
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "the server did not start for initialisation"
            exit 1
        fi
        sleep 0.25
    done
    password=${MYSQL_ROOT_PASSWORD:-}
    password=${password//\\/\\\\}
    password=${password//\'/\\\'}
    {
        echo "DELETE FROM mysql.global_priv WHERE User='';"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('$password');"
        echo "CREATE USER 'root'@'%' IDENTIFIED BY '$password';"
        echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        if [ -n "${MYSQL_DATABASE:-}" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE//\`/\`\`}\`;"
        fi
        echo "FLUSH PRIVILEGES;"
    } | mariadb --socket="$INIT_SOCKET" -uroot
    kill -TERM "$pid"
    wait "$pid" || true
    say "initialised $DATADIR"
fi

exec mariadbd --user=mysql --datadir="$DATADIR" "$@"
"""

# Clients come from other machines (no name service there to ask).
MARIADB_CONFIG = b"""[mysqld]
bind-address = 0.0.0.0
port = 3306
skip-name-resolve
"""
MARIADB_CONFIG_PATH = "etc/mysql/mariadb.conf.d/90-flocker-lab.cnf"

MARIADB_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'ENTRYPOINT ["%s"]' % (MARIADB_ENTRYPOINT,),
    "CMD []",
    "EXPOSE 3306",
)

# What is not needed in a container and only makes the image bigger.
_MARIADB_PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists",
                  "usr/share/doc", "usr/share/man", "usr/share/info",
                  "usr/share/locale", "var/lib/mysql")


def apt_sources(root: str = "/etc/apt") -> List[Tuple[str, str]]:
    """``(path, text)`` of this machine's apt source files."""
    paths = [os.path.join(root, "sources.list")]
    paths += sorted(glob.glob(os.path.join(root, "sources.list.d", "*.list")))
    paths += sorted(glob.glob(os.path.join(root, "sources.list.d", "*.sources")))
    found = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                found.append((path, f.read()))
        except OSError:
            continue
    return found


def _one_line_entries(text: str):
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        fields = line.split()
        if len(fields) < 3 or fields[0] != "deb":
            continue
        fields = fields[1:]
        if fields[0].startswith("["):  # [arch=amd64 signed-by=...]
            while fields and not fields[0].endswith("]"):
                fields = fields[1:]
            fields = fields[1:]
        if len(fields) >= 2:
            yield fields[0], [fields[1]]


def _deb822_entries(text: str):
    for stanza in text.replace("\r", "").split("\n\n"):
        fields = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


def find_mirror(sources: Iterable[Tuple[str, str]],
                suite: str = MARIADB_SUITE) -> str:
    """
    The first Debian mirror in ``sources`` (``(path, text)`` as from
    ``apt_sources()``) that serves ``suite`` itself (not -security or
    -updates).  ``ValueError`` if there is none.
    """
    for path, text in sources:
        entries = (_deb822_entries(text) if path.endswith(".sources")
                   else _one_line_entries(text))
        for uri, suites in entries:
            if suite in suites and uri.startswith(("http://", "https://",
                                                   "file:/", "ftp://")):
                return uri
    raise ValueError(
        "no apt source for Debian %s found in /etc/apt/sources.list or "
        "/etc/apt/sources.list.d/; debootstrap needs a mirror to build the "
        "MariaDB image" % (suite,))


def _debootstrap_version() -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"],
                            capture_output=True)
    return result.stdout.decode("ascii", "replace").strip()


def _relay_debootstrap(stream, progress, started):
    """Pass on one line per phase of debootstrap, not one per package."""
    seen = set()
    tail = []
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        tail = (tail + [line])[-20:]
        if not line.startswith("I: "):
            continue
        phase = line[3:].split(" ", 1)[0]
        if phase not in seen:
            seen.add(phase)
            progress("  debootstrap %3d s: %s" % (time.monotonic() - started,
                                                  line[3:]))
    return tail


def _unmount_under(directory: str):
    # debootstrap mounts /proc and /sys inside the target while it works;
    # a build that was interrupted may leave them there.
    from ._system import unmount_all
    unmount_all(directory)


def _build_mariadb_rootfs(mirror: str, workdir: str, path: str, progress):
    if os.path.exists(workdir):
        _unmount_under(workdir)
        shutil.rmtree(workdir)
    root = os.path.join(workdir, "root")
    os.makedirs(workdir)
    try:
        started = time.monotonic()
        progress("building %s: debootstrap %s from %s (about a minute)"
                 % (MARIADB_IMAGE.repository, MARIADB_SUITE, mirror))
        argv = ["debootstrap", "--variant=minbase",
                "--include=" + ",".join(MARIADB_PACKAGES),
                MARIADB_SUITE, root, mirror]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        try:
            tail = _relay_debootstrap(process.stdout, progress, started)
        finally:
            if process.stdout is not None:
                process.stdout.close()
            status = process.wait()
        if status != 0:
            log = os.path.join(root, "debootstrap", "debootstrap.log")
            detail = "\n".join(tail)
            try:
                with open(log, errors="replace") as f:
                    detail += "\n" + "".join(f.readlines()[-20:])
            except OSError:
                pass
            raise RuntimeError("debootstrap failed (exit status %s):\n%s"
                               % (status, detail.strip()))
        _unmount_under(root)
        for relative in _MARIADB_PRUNE:
            target = os.path.join(root, relative)
            if os.path.isdir(target):
                for entry in os.listdir(target):
                    entry_path = os.path.join(target, entry)
                    if os.path.isdir(entry_path) and not os.path.islink(entry_path):
                        shutil.rmtree(entry_path)
                    else:
                        os.unlink(entry_path)
        script = os.path.join(root, MARIADB_ENTRYPOINT.lstrip("/"))
        with open(script, "wb") as f:
            f.write(MARIADB_ENTRYPOINT_SCRIPT)
        os.chmod(script, 0o755)
        with open(os.path.join(root, MARIADB_CONFIG_PATH), "wb") as f:
            f.write(MARIADB_CONFIG)
        progress("  packing the root filesystem (%d s so far)"
                 % (time.monotonic() - started,))
        result = subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", path,
             "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
             "--exclude=./debootstrap", "."],
            capture_output=True)
        if result.returncode != 0:
            raise RuntimeError("tar failed: %s" % (
                result.stderr.decode("utf-8", "replace").strip(),))
        progress("  %s built in %d s (%d MB)" % (
            MARIADB_IMAGE.repository, time.monotonic() - started,
            os.path.getsize(path) >> 20))
    finally:
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def mariadb_inputs(mirror: str) -> dict:
    return {
        "suite": MARIADB_SUITE,
        "packages": list(MARIADB_PACKAGES),
        "mirror": mirror,
        "debootstrap": _debootstrap_version(),
        "entrypoint": MARIADB_ENTRYPOINT_SCRIPT.decode("utf-8"),
        "config": MARIADB_CONFIG.decode("utf-8"),
        "prune": list(_MARIADB_PRUNE),
        "changes": list(MARIADB_CHANGES),
    }


def mariadb_tarball(cache_dir: str = DEFAULT_CACHE_DIR,
                    mirror: Optional[str] = None,
                    progress: Callable[[str], None] = lambda line: None) -> str:
    """
    The path of the MariaDB root filesystem tarball, built with debootstrap
    from ``mirror`` (default: this machine's apt source for bookworm) when
    it is not cached.  Blocking, root only, about a minute the first time.
    Concurrent callers wait for one build.
    """
    if mirror is None:
        mirror = find_mirror(apt_sources())
    inputs = mariadb_inputs(mirror)
    directory = os.path.join(cache_dir, "images")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".mariadb.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workdir = os.path.join(directory, ".mariadb-build")
        return cached_tarball(
            cache_dir, "mariadb", inputs,
            lambda path: _build_mariadb_rootfs(mirror, workdir, path, progress))
