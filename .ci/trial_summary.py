"""Turn trial's closing summary into the line ``N passed, M failed``.

trial ends with ``PASSED (successes=N, skips=K)`` or
``FAILED (failures=F, errors=E, successes=N, ...)``.  Failures, errors and
unexpected successes count as failed; expected failures count as passed.
"""

import re
import sys


def counts_of(text):
    match = None
    for match in re.finditer(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", text, re.M):
        pass
    if match is None:
        return None
    return dict(
        (k.strip(), int(v))
        for k, v in (item.split("=") for item in match.group(2).split(","))
    )


def summarise(text):
    counts = counts_of(text)
    if counts is None:
        return None
    return line_for(counts)


def line_for(counts):
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = (counts.get("failures", 0) + counts.get("errors", 0)
              + counts.get("unexpectedSuccesses", 0))
    line = "%d passed, %d failed" % (passed, failed)
    if counts.get("skips"):
        line += ", %d skipped" % counts["skips"]
    return line


def main(paths):
    """One line for one or more trial runs' logs, summed."""
    total = {}
    missing = 0
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                counts = counts_of(f.read())
        except FileNotFoundError:
            counts = None
        if counts is None:
            missing += 1
            continue
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    if missing:
        total["errors"] = total.get("errors", 0) + missing
    print(line_for(total) + (" (%d run(s) printed no summary)" % missing
                             if missing else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
