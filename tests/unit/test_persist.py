"""
Tests for flocker_async.node._persist: atomic writes that survive crashes,
and the desired state store.
"""

import errno
import os
import stat
import subprocess
import sys
import textwrap

from twisted.trial.unittest import TestCase

from flocker_async.node._persist import (
    DESIRED_STATE_FILE,
    DesiredStateStore,
    read_if_exists,
    remove_stale_temporaries,
    write_atomically,
)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class WriteAtomicallyTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "state")

    def names(self):
        return sorted(os.listdir(self.directory))

    def test_new_file(self):
        write_atomically(self.path, b"hello")
        self.assertEqual(read_if_exists(self.path), b"hello")
        self.assertEqual(self.names(), ["state"])

    def test_replace(self):
        write_atomically(self.path, b"old")
        write_atomically(self.path, b"new content")
        self.assertEqual(read_if_exists(self.path), b"new content")
        self.assertEqual(self.names(), ["state"])

    def test_empty_and_large(self):
        write_atomically(self.path, b"")
        self.assertEqual(read_if_exists(self.path), b"")
        data = os.urandom(3 * 1024 * 1024 + 7)
        write_atomically(self.path, data)
        self.assertEqual(read_if_exists(self.path), data)

    def test_mode_0600_whatever_the_umask(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        write_atomically(self.path, b"x")
        self.assertEqual(mode(self.path), 0o600)

    def test_mode_replaces_looser_file(self):
        with open(self.path, "wb") as f:
            f.write(b"old")
        os.chmod(self.path, 0o644)
        write_atomically(self.path, b"new")
        self.assertEqual(mode(self.path), 0o600)

    def test_other_mode(self):
        write_atomically(self.path, b"x", mode=0o644)
        self.assertEqual(mode(self.path), 0o644)

    def test_order_of_durability(self):
        """The file's data is fsynced before the rename, the directory after."""
        calls = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd):
            kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
            calls.append("fsync " + kind)
            return real_fsync(fd)

        def rename(source, destination):
            calls.append("rename")
            self.assertEqual(os.path.dirname(source), os.path.abspath(self.directory))
            return real_rename(source, destination)

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)
        write_atomically(self.path, b"data")
        self.assertEqual(calls, ["fsync file", "rename", "fsync directory"])

    def test_write_fails_midway(self):
        """A full disk halfway through the write: old content, no debris."""
        write_atomically(self.path, b"previous")
        real_write = os.write
        written = []

        def write(fd, data):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(real_write(fd, bytes(data[:len(data) // 2])))
            return written[-1]

        self.patch(os, "write", write)
        error = self.assertRaises(OSError, write_atomically, self.path, b"x" * 1000)
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertEqual(written, [500])
        self.assertEqual(read_if_exists(self.path), b"previous")
        self.assertEqual(self.names(), ["state"])

    def test_fsync_fails(self):
        write_atomically(self.path, b"previous")

        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "fsync", fsync)
        self.assertRaises(OSError, write_atomically, self.path, b"new")
        self.assertEqual(read_if_exists(self.path), b"previous")
        self.assertEqual(self.names(), ["state"])

    def test_rename_fails(self):
        write_atomically(self.path, b"previous")

        def rename(source, destination):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.patch(os, "rename", rename)
        self.assertRaises(OSError, write_atomically, self.path, b"new")
        self.assertEqual(read_if_exists(self.path), b"previous")
        self.assertEqual(self.names(), ["state"])

    def test_not_bytes(self):
        self.assertRaises(TypeError, write_atomically, self.path, "text")
        self.assertEqual(self.names(), [])

    def test_missing_directory(self):
        self.assertRaises(FileNotFoundError, write_atomically,
                          os.path.join(self.directory, "nowhere", "state"), b"x")


class ReadIfExistsTests(TestCase):
    def test_missing(self):
        self.assertIsNone(read_if_exists(self.mktemp()))

    def test_present(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\x00\x01data")
        self.assertEqual(read_if_exists(path), b"\x00\x01data")

    def test_other_errors_raised(self):
        """Only a missing file means "nothing saved"; a directory is an error."""
        path = self.mktemp()
        os.mkdir(path)
        self.assertRaises(IsADirectoryError, read_if_exists, path)


# A process that saves, then dies at a chosen point of a second save.
_CRASH = textwrap.dedent("""\
    import os, sys
    from flocker_async.node._persist import DesiredStateStore
    directory, point = sys.argv[1], sys.argv[2]
    store = DesiredStateStore(directory)
    store.save(b"first deployment")
    real_write, real_rename = os.write, os.rename
    def write(fd, data):
        if point == "write":
            real_write(fd, bytes(data[:len(data) // 2]))
            os._exit(9)
        return real_write(fd, data)
    def rename(source, destination):
        if point == "rename":
            os._exit(9)
        return real_rename(source, destination)
    os.write, os.rename = write, rename
    store.save(b"second deployment" * 1000)
    os._exit(0)
    """)


class CrashTests(TestCase):
    """A daemon killed in the middle of a save loses only the new state."""

    def crash(self, point):
        directory = self.mktemp()
        result = subprocess.run([sys.executable, "-c", _CRASH, directory, point],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 9, result.stderr)
        return directory

    def check_recovery(self, directory):
        names = os.listdir(directory)
        leftovers = [n for n in names if n != DESIRED_STATE_FILE]
        self.assertEqual(len(leftovers), 1, names)
        store = DesiredStateStore(directory)
        self.assertEqual(store.load(), b"first deployment")
        store.save(b"third deployment")
        self.assertEqual(os.listdir(directory), [DESIRED_STATE_FILE])
        self.assertEqual(DesiredStateStore(directory).load(), b"third deployment")

    def test_crash_during_write(self):
        directory = self.crash("write")
        self.check_recovery(directory)

    def test_crash_before_rename(self):
        directory = self.crash("rename")
        [leftover] = [n for n in os.listdir(directory) if n != DESIRED_STATE_FILE]
        with open(os.path.join(directory, leftover), "rb") as f:
            self.assertEqual(f.read(), b"second deployment" * 1000)
        self.check_recovery(directory)


class DesiredStateStoreTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()

    def test_nothing_saved(self):
        self.assertIsNone(DesiredStateStore(self.directory).load())

    def test_round_trip(self):
        store = DesiredStateStore(self.directory)
        store.save(b'{"version": 1}')
        self.assertEqual(store.load(), b'{"version": 1}')

    def test_survives_restart(self):
        DesiredStateStore(self.directory).save(b"desired")
        self.assertEqual(DesiredStateStore(self.directory).load(), b"desired")

    def test_creates_private_directory(self):
        store = DesiredStateStore(os.path.join(self.directory, "state"))
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        store.save(b"x")
        self.assertEqual(mode(store.directory), 0o700)
        self.assertEqual(mode(store.path), 0o600)
        self.assertEqual(store.path, os.path.join(self.directory, "state",
                                                  DESIRED_STATE_FILE))

    def test_replaces(self):
        store = DesiredStateStore(self.directory)
        store.save(b"one")
        store.save(b"two")
        self.assertEqual(store.load(), b"two")

    def test_bytes_only(self):
        store = DesiredStateStore(self.directory)
        self.assertRaises(TypeError, store.save, "text")
        self.assertIsNone(store.load())

    def test_failed_save_keeps_previous(self):
        store = DesiredStateStore(self.directory)
        store.save(b"previous")

        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "fsync", fsync)
        self.assertRaises(OSError, store.save, b"new")
        self.assertEqual(store.load(), b"previous")

    def test_stale_temporaries_only_ours(self):
        """Cleaning up after a crash removes only our own temporary files."""
        os.mkdir(self.directory)
        path = os.path.join(self.directory, DESIRED_STATE_FILE)
        ours = ".%s.abc123.tmp" % (DESIRED_STATE_FILE,)
        others = ["other.tmp", ".other.abc.tmp", DESIRED_STATE_FILE + ".bak",
                  ".%s.abc" % (DESIRED_STATE_FILE,)]
        for name in [ours] + others:
            open(os.path.join(self.directory, name), "wb").close()
        self.assertEqual(remove_stale_temporaries(path), 1)
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(others))

    def test_temporary_names_match_cleanup(self):
        """What write_atomically leaves on a crash is what cleanup removes."""
        os.mkdir(self.directory)
        path = os.path.join(self.directory, DESIRED_STATE_FILE)
        real_rename = os.rename

        def rename(source, destination):
            os.link(source, source + ".kept")
            raise OSError(errno.EIO, "crash")

        self.patch(os, "rename", rename)
        self.assertRaises(OSError, write_atomically, path, b"x")
        [kept] = os.listdir(self.directory)
        real_rename(os.path.join(self.directory, kept),
                  os.path.join(self.directory, kept[:-len(".kept")]))
        self.assertEqual(remove_stale_temporaries(path), 1)
        self.assertEqual(os.listdir(self.directory), [])
