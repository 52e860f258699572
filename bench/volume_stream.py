"""
Volume stream throughput: raw ``zfs send | zfs recv`` against our send
stream (push producer) feeding our receive (consumer), on the same data
between the same kind of pools, side by side in one run.  Root only; uses
zfs-fuse pools in /var/tmp (cleaned up, also after a failure).

    .venv/bin/python bench/volume_stream.py [--size-mib 1024] [--rounds 2]

Prints MB/s for each, the ratio ours/raw, and the RSS growth of this
process during our transfers.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import LoopingCall, react  # noqa: E402

from flocker_async.volume import (  # noqa: E402
    VolumeName,
    ZFSStoragePool,
    copy_snapshot,
)
from tests.testtools import zfs as zfs_fixture  # noqa: E402

MB = 1000 * 1000
MIB = 1024 * 1024


def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " not in /proc/self/status")


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def fill(path, mib):
    """Random data written by dd, so this process's memory stays as it is."""
    subprocess.run(["dd", "if=/dev/urandom", "of=" + path, "bs=1M",
                    "count=%d" % (mib,), "iflag=fullblock", "status=none"],
                   check=True)


def sha256_of(path):
    out = subprocess.run(["sha256sum", path], capture_output=True,
                         check=True).stdout
    return out.split()[0].decode()


def raw_transfer(source_snapshot, target_dataset):
    """zfs send | zfs recv with two Popen processes (no shell)."""
    started = time.monotonic()
    send = subprocess.Popen(["zfs", "send", source_snapshot],
                            stdout=subprocess.PIPE)
    recv = subprocess.Popen(["zfs", "recv", "-u", target_dataset],
                            stdin=send.stdout)
    send.stdout.close()
    if recv.wait() != 0 or send.wait() != 0:
        raise RuntimeError("raw zfs send | zfs recv failed")
    return time.monotonic() - started


class RSSSampler:
    def __init__(self, reactor):
        self.peak = 0
        self.loop = LoopingCall(self.sample)
        self.loop.clock = reactor

    def sample(self):
        self.peak = max(self.peak, rss_kib())

    def start(self):
        self.loop.start(0.02)

    def stop(self):
        self.loop.stop()
        self.sample()


def destroy_dataset(dataset):
    """zfs-fuse may call a just-received dataset busy for a moment."""
    for attempt in range(20):
        result = subprocess.run(["zfs", "destroy", "-r", "-f", dataset],
                                capture_output=True)
        if result.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("cannot destroy %s: %s" % (
        dataset, result.stderr.decode().strip()))


def stream_size(dataset):
    out = subprocess.run(["zfs", "get", "-H", "-p", "-o", "value",
                          "referenced", dataset],
                         capture_output=True, check=True).stdout
    return int(out)


async def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true")
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/volume_stream.py needs root (zfs-fuse)")
    size = options.size_mib * MIB
    pool_size = size + size // 2 + 256 * MIB
    zfs_fixture.prepare()
    pools = []
    storage_pools = []
    try:
        source_zpool = zfs_fixture.ZFSPool(pool_size)
        pools.append(source_zpool)
        raw_zpool = zfs_fixture.ZFSPool(pool_size)
        pools.append(raw_zpool)
        ours_zpool = zfs_fixture.ZFSPool(pool_size)
        pools.append(ours_zpool)

        def storage(zpool, node):
            pool = ZFSStoragePool(reactor, zpool.name,
                                  zpool.mountpoint + "/volumes", node)
            storage_pools.append(pool)
            return pool
        source = storage(source_zpool, "source")
        target = storage(ours_zpool, "target")
        name = VolumeName("bench")
        volume = await source.create(name)
        print("writing %d MiB of random data into %s ..." % (
            options.size_mib, source_zpool.name), flush=True)
        started = time.monotonic()
        source_file = os.path.join(volume.mountpoint, "data.bin")
        fill(source_file, options.size_mib)
        print("  %.1f s" % (time.monotonic() - started,), flush=True)
        snapshot = await source.snapshot(name, "bench")
        dataset = source._dataset(name)
        data_bytes = stream_size(dataset)

        raw_times, our_times, growths = [], [], []

        def run_raw(round_number):
            raw_target = raw_zpool.name + "/bench"
            os.sync()  # no write-back of an earlier round during this one
            seconds = raw_transfer(dataset + "@bench", raw_target)
            raw_times.append(seconds)
            destroy_dataset(raw_target)
            print("round %d raw:  %.2f s  %.1f MB/s" % (
                round_number, seconds, data_bytes / seconds / MB), flush=True)

        async def run_ours(round_number):
            os.sync()  # no write-back of an earlier round during this one
            sampler = RSSSampler(reactor)
            before = rss_kib()
            reset_peak_rss()
            sampler.start()
            cpu_before = cpu_seconds()
            started = time.monotonic()
            await copy_snapshot(source, snapshot, target)
            seconds = time.monotonic() - started
            cpu = cpu_seconds() - cpu_before
            sampler.stop()
            growth = max(sampler.peak, rss_kib("VmHWM")) - before
            our_times.append(seconds)
            growths.append(growth)
            print("round %d ours: %.2f s  %.1f MB/s  RSS growth %.1f MiB  "
                  "CPU of this process %.2f s" % (
                      round_number, seconds, data_bytes / seconds / MB,
                      growth / 1024, cpu), flush=True)
            if not options.no_verify and round_number == options.rounds:
                received = os.path.join(target.mount_root, "bench",
                                        "data.bin")
                same = sha256_of(received) == sha256_of(source_file)
                print("checksum of received data: %s" % (
                    "equal" if same else "DIFFERENT"), flush=True)
                if not same:
                    raise SystemExit(1)
            destroy_dataset(ours_zpool.name + "/bench")

        for round_number in range(1, options.rounds + 1):
            # Alternate which goes first so neither always gets warm caches.
            if round_number % 2:
                run_raw(round_number)
                await run_ours(round_number)
            else:
                await run_ours(round_number)
                run_raw(round_number)

        raw_rate = data_bytes / min(raw_times) / MB
        our_rate = data_bytes / min(our_times) / MB
        print()
        print("volume data:        %d MiB (referenced %d bytes)" % (
            options.size_mib, data_bytes))
        raw_median = data_bytes / sorted(raw_times)[len(raw_times) // 2] / MB
        our_median = data_bytes / sorted(our_times)[len(our_times) // 2] / MB
        print("raw send|recv:      %.1f MB/s best, %.1f MB/s median "
              "(%d rounds)" % (raw_rate, raw_median, options.rounds))
        print("ours (producer/consumer): %.1f MB/s best, %.1f MB/s median" % (
            our_rate, our_median))
        print("ratio ours/raw:     %.2f best, %.2f median" % (
            our_rate / raw_rate, our_median / raw_median))
        print("RSS growth (max):   %.1f MiB" % (max(growths) / 1024,))
    finally:
        for storage_pool in storage_pools:
            storage_pool.close()
        for zpool in pools:
            zpool.destroy()


if __name__ == "__main__":
    react(lambda reactor, argv: Deferred.fromCoroutine(main(reactor, argv)),
          (sys.argv[1:],))
