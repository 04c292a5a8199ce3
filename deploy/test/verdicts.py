"""Checks a JSON report of deploy/test/suite/suite.toml: every test of the manifest is in it,
with the status its name starts with (`passed-…`, `oom-…`), and the retried one is flaky.

usage: python3 verdicts.py MANIFEST REPORT LABEL
Prints one line per test that is wrong and exits 1, or one summary line and exits 0.
"""

import json
import sys
import tomllib


def main(manifest_path: str, report_path: str, label: str) -> int:
    with open(manifest_path, "rb") as f:
        names = [t["name"] for t in tomllib.load(f)["tests"]]
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    by_name = {t["name"]: t for t in report["tests"]}
    wrong = []
    for name in names:
        test = by_name.get(name)
        expected = name.split("-", 1)[0]
        if test is None:
            wrong.append(f"{name}: not in the report")
            continue
        if test["status"] != expected:
            first = (test.get("reason") or test.get("stderr") or "").strip().splitlines()[:3]
            wrong.append(f"{name}: {test['status']}, expected {expected}: {' | '.join(first)}")
        if "flaky" in name and not test.get("flaky"):
            wrong.append(f"{name}: passed on a retry but is not marked flaky")
    extra = sorted(set(by_name) - set(names))
    if extra:
        wrong.append(f"tests the manifest does not have: {extra}")
    if len(names) < 20:
        wrong.append(f"the suite has {len(names)} tests; it must have at least 20")
    for line in wrong:
        print(f"deploy-test: {label}: {line}")
    if wrong:
        return 1
    counts: dict[str, int] = {}
    for name in names:
        status = by_name[name]["status"]
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"deploy-test: {label}: all {len(names)} verdicts right ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
