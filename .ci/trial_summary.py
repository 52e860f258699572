"""Turn trial's closing summary into the line ``N passed, M failed``.

trial ends with ``PASSED (successes=N, skips=K)`` or
``FAILED (failures=F, errors=E, successes=N, ...)``.  Failures, errors and
unexpected successes count as failed; expected failures count as passed.
"""

import re
import sys


def summarise(text):
    match = None
    for match in re.finditer(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", text, re.M):
        pass
    if match is None:
        return None
    counts = dict(
        (k.strip(), int(v))
        for k, v in (item.split("=") for item in match.group(2).split(","))
    )
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = (counts.get("failures", 0) + counts.get("errors", 0)
              + counts.get("unexpectedSuccesses", 0))
    line = "%d passed, %d failed" % (passed, failed)
    if counts.get("skips"):
        line += ", %d skipped" % counts["skips"]
    return line


def main(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        line = summarise(f.read())
    if line is None:
        print("0 passed, 1 failed (trial printed no summary)")
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
