"""
OpenSSH's own client against our conch command server: what an operator
typing ``ssh -p 4522 root@node version`` gets.  Runs as any user; needs the
``ssh`` and ``ssh-keygen`` binaries (openssh-client, installed by make).
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase

from flocker_async import ssh
from flocker_async._process import CommandFailed, run_process

from ..testtools.ssh import VERSION, SSHServerFixture, pattern


class OpenSSHClientTests(TestCase):
    window_size = 256 * 1024
    max_packet = 32 * 1024

    async def setUp(self):
        if shutil.which("ssh") is None:
            raise SkipTest("OpenSSH client (ssh) is not installed")
        directory = self.mktemp()
        os.makedirs(directory)
        self.server = await SSHServerFixture(
            self, directory, window_size=self.window_size,
            max_packet=self.max_packet).start()

    def ssh_argv(self, command, key="operator", options=()):
        server = self.server
        return ["ssh", "-F", "/dev/null", "-p", str(server.port),
                "-i", os.path.join(server.directory, key),
                "-o", "UserKnownHostsFile=" + server.known_hosts,
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                *options, "root@127.0.0.1", *command]

    async def ssh(self, command, key="operator", options=(), stdin=None):
        """Run OpenSSH; return (status, stdout, stderr) whatever the status."""
        try:
            result = await run_process(reactor, self.ssh_argv(command, key, options),
                                       stdin=stdin, env=dict(os.environ))
        except CommandFailed as e:
            result = e.result
        return result.status, result.stdout, result.stderr

    async def test_version(self):
        """`ssh -p PORT -i key root@127.0.0.1 version` prints the version."""
        status, stdout, stderr = await self.ssh(["version"])
        self.assertEqual((status, stdout), (0, VERSION), stderr)
        self.assertEqual(self.server.log.calls, [("version", ssh.OPERATOR, [])])

    async def test_unknown_command(self):
        """An unknown command exits 127 with a message on stderr."""
        status, stdout, stderr = await self.ssh(["bash", "-i"])
        self.assertEqual((status, stdout), (ssh.EXIT_UNKNOWN_COMMAND, b""))
        self.assertIn(b"unknown command 'bash'", stderr)

    async def test_wrong_role_and_exit_status(self):
        """A peer running state exits 126; a command's own status comes through."""
        status, _, stderr = await self.ssh(["state"], key="peer")
        self.assertEqual(status, ssh.EXIT_NOT_PERMITTED)
        self.assertIn(b"not permitted for the peer role", stderr)
        status, _, stderr = await self.ssh(["exit", "7"])
        self.assertEqual((status, stderr), (7, b"exiting 7\n"))

    async def test_arguments_quoted_by_caller(self):
        """OpenSSH joins arguments with spaces; our shlex split honours quotes."""
        status, stdout, _ = await self.ssh(["echo", "'a b'", "c"])
        self.assertEqual(status, 0)
        self.assertIn(b'"args": ["a b", "c"]', stdout)

    async def test_stdin_stream(self):
        """OpenSSH's stdin reaches `receive` intact, within our window."""
        data = pattern(0, 6 * 1024 * 1024)
        status, stdout, stderr = await self.ssh(["receive", "vol"], key="peer",
                                                stdin=data)
        self.assertEqual((status, stdout), (0, b"%d\n" % (len(data),)), stderr)
        consumer = self.server.log.consumers[0]
        self.assertEqual((consumer.received, consumer.offset_errors), (len(data), 0))
        self.assertLessEqual(self.server.log.sessions[0].stdin_max_buffered,
                             self.window_size)

    async def test_stdout_stream(self):
        """A large stdout reaches OpenSSH intact."""
        size = 6 * 1024 * 1024
        status, stdout, stderr = await self.ssh(["produce", str(size)])
        self.assertEqual(status, 0, stderr)
        self.assertEqual(len(stdout), size)
        self.assertTrue(stdout == pattern(0, size))

    async def test_password_refused(self):
        """Only publickey is offered: password/keyboard-interactive get nowhere."""
        status, stdout, stderr = await self.ssh(["version"], options=[
            "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive"])
        self.assertEqual(status, 255)
        self.assertIn(b"Permission denied (publickey)", stderr)
        self.assertEqual(self.server.log.calls, [])

    async def test_unknown_key(self):
        """A key the server does not know is denied."""
        status, _, stderr = await self.ssh(["version"], key="stranger")
        self.assertEqual(status, 255)
        self.assertIn(b"Permission denied (publickey)", stderr)

    async def test_pty_refused(self):
        """-tt: the pty is refused (OpenSSH 9 then gives up, status 255)."""
        status, stdout, stderr = await self.ssh(["version"], options=["-tt"])
        self.assertIn(b"PTY allocation request failed", stderr)
        self.assertEqual(status, 255)

    async def test_shell_refused(self):
        """No command means a shell: refused, ssh fails."""
        status, stdout, stderr = await self.ssh([], stdin=b"")
        self.assertNotEqual(status, 0)
        self.assertIn(b"shell request failed", stderr)
        self.assertEqual(self.server.log.calls, [])

    async def test_local_forwarding_refused(self):
        """-W (a direct-tcpip channel) is administratively prohibited."""
        status, _, stderr = await self.ssh(
            [], options=["-W", "127.0.0.1:%d" % (self.server.port,)], stdin=b"")
        self.assertEqual(status, 255)
        self.assertIn(b"administratively prohibited", stderr)

    async def test_remote_forwarding_refused(self):
        """-R is refused by the server."""
        status, _, stderr = await self.ssh(["version"], options=[
            "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9"])
        self.assertEqual(status, 255)
        self.assertIn(b"remote port forwarding failed", stderr)

    async def test_environment_not_applied(self):
        """SetEnv is refused per request; the command runs regardless."""
        status, stdout, _ = await self.ssh(["version"],
                                           options=["-o", "SetEnv=LD_PRELOAD=/x.so"])
        self.assertEqual((status, stdout), (0, VERSION))

    async def test_unknown_host_key(self):
        """Without our known_hosts line OpenSSH refuses; with it (above) it works."""
        os.remove(self.server.known_hosts)
        status, _, stderr = await self.ssh(["version"])
        self.assertEqual(status, 255)
        self.assertIn(b"Host key verification failed", stderr)
        self.assertEqual(self.server.log.calls, [])

    async def test_modern_algorithms_negotiated(self):
        """
        OpenSSH's defaults meet ours on a CTR cipher and an SHA-2 MAC, with
        no compression (issue 17, point 11).
        """
        status, stdout, stderr = await self.ssh(["version"], options=["-v"])
        self.assertEqual((status, stdout), (0, VERSION), stderr)
        text = stderr.decode("utf-8", "replace")
        for direction in ("server->client", "client->server"):
            [line] = [l for l in text.splitlines()
                      if "kex: %s cipher:" % (direction,) in l]
            self.assertRegex(line, r"cipher: aes(128|192|256)-ctr MAC: "
                                   r"hmac-sha2-(256|512) compression: none")
        [kex] = [l for l in text.splitlines() if "kex: algorithm:" in l]
        self.assertNotIn("sha1", kex)

    async def test_removed_algorithms_refused(self):
        """
        An OpenSSH client told to use only what we removed (CBC ciphers,
        MD5/SHA-1 MACs, SHA-1 key exchanges) finds nothing in common.
        """
        for option in ("Ciphers=aes128-cbc,aes256-cbc,3des-cbc",
                       "MACs=hmac-sha1,hmac-md5",
                       "KexAlgorithms=diffie-hellman-group14-sha1,"
                       "diffie-hellman-group-exchange-sha1,diffie-hellman-group1-sha1"):
            status, stdout, stderr = await self.ssh(["version"], options=["-o", option])
            self.assertEqual((status, stdout), (255, b""), option)
            self.assertIn(b"no matching", stderr, option)
        self.assertEqual(self.server.log.calls, [])

    async def test_rsa_operator_key(self):
        """
        An operator's RSA key logs in with OpenSSH (8.8 and later offer RSA
        keys only to servers that advertise rsa-sha2 signatures).
        """
        if shutil.which("ssh-keygen") is None:
            raise SkipTest("ssh-keygen is not installed")
        path = os.path.join(self.server.directory, "rsa")
        await run_process(reactor, ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048",
                                    "-N", "", "-f", path])
        with open(path + ".pub") as f:
            rsa = ssh.parse_public_keys(f.read())
        self.server.authorizer.set_keys(ssh.OPERATOR,
                                        [self.server.operator_key] + rsa)
        status, stdout, stderr = await self.ssh(["version"], key="rsa",
                                                options=["-v"])
        self.assertEqual((status, stdout), (0, VERSION), stderr)
        self.assertRegex(stderr.decode(), r"server-sig-algs=<[^>]*rsa-sha2-512")

    async def test_fingerprint_matches_ssh_keygen(self):
        """fingerprint() prints what ssh-keygen -l prints for the same key."""
        if shutil.which("ssh-keygen") is None:
            raise SkipTest("ssh-keygen is not installed")
        path = os.path.join(self.server.directory, "host_key.pub")
        result = await run_process(reactor, ["ssh-keygen", "-l", "-f", path])
        self.assertEqual(result.stdout.split()[1].decode("ascii"),
                         ssh.fingerprint(self.server.host_key))
