"""
One table from the benchmarks' JSON files (``make bench`` runs them and
then this):

    python bench/report.py transfer.json downtime.json converge.json failover.json
"""

import json
import sys


def main(paths):
    results = {}
    for path in paths:
        with open(path) as f:
            results.update(json.load(f))
    rows = []
    t = results.get("transfer")
    if t:
        raw = t["raw_mbps"]
        rows += [
            ("transfer: raw zfs send | zfs recv", "%.0f MB/s" % raw, "1.00", ""),
            ("transfer: zfs send | OpenSSH | zfs recv", "%.0f MB/s" % t["openssh_mbps"],
             "%.2f" % (t["openssh_mbps"] / raw), ""),
            ("transfer: our push over conch", "%.0f MB/s" % t["ours_mbps"],
             "%.2f" % (t["ours_mbps"] / raw), ">= 0.90"),
            ("transfer: daemon RSS growth", "%.1f MiB" % t["rss_growth_mib"], "",
             "< 64 MiB"),
        ]
    cases = results.get("downtime") or []
    base = next((c["downtime_s"] for c in cases
                 if c["size_mib"] == 1 and c["delta_mib"] == 0), None)
    for c in cases:
        ratio = "%.2f" % (c["downtime_s"] / base) if base else ""
        rows.append(("downtime: %d MiB volume, %d MiB changed" % (c["size_mib"], c["delta_mib"]),
                     "%.2f s, %d refused" % (c["downtime_s"], c["refused"]),
                     ratio, "0 refused; 1024/1 <= 1.5 x 1/0"))
        if c.get("naive_downtime_s") is not None:
            rows.append(("downtime: the same, naive (stop, full send, start)",
                         "%.2f s" % (c["naive_downtime_s"],),
                         "ours x %.1f shorter" % (c["naive_downtime_s"] / c["downtime_s"]),
                         ">= 3 x"))
    conv = results.get("converge") or {}
    if conv:
        one = conv.get("1")
        for n in sorted(conv, key=int):
            rows.append(("converge: %s node%s" % (n, "" if n == "1" else "s"),
                         "%.2f s" % conv[n], "%.2f" % (conv[n] / one) if one else "",
                         "8 <= 1.5 x 1" if n == "8" else ""))
    failover = results.get("failover") or {}
    for r in failover.get("rpo") or []:
        if r["median_s"] is None:
            continue
        rows.append(("failover: RPO, replication_interval %d s (%d runs)"
                     % (r["interval_s"], len(r["runs"])),
                     "%.2f s median, %.2f s max, stated %s s" % (
                         r["median_s"], r["max_s"], r["stated_median_s"]),
                     "%.2f x interval" % (r["median_s"] / r["interval_s"],),
                     "none lost before the stated snapshot"
                     + ("" if r["within_snapshot_age"] else ": FAILED")))
    cost = failover.get("cost")
    if cost and cost.get("daemon_cpu_s_per_gib") is not None:
        rows += [
            ("failover: replication CPU, owner's flocker-node",
             "%.2f s/GiB (+%.2f s/GiB its zfs commands)" % (
                 cost["daemon_cpu_s_per_gib"], cost["daemon_children_cpu_s_per_gib"]),
             "", ""),
            ("failover: replication CPU, zfs-fuse (shared)",
             "%.2f s/GiB" % (cost["zfs_fuse_cpu_s_per_gib"],), "", ""),
        ]
    widths = [max(len(str(r[i])) for r in rows + [("what", "measured", "ratio", "target")])
              for i in range(4)]
    for row in [("what", "measured", "ratio", "target")] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main(sys.argv[1:])
