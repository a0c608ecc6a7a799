"""Audit the installed dependencies against what the package registry says about them.

Vulnerability databases (pip-audit's PyPI JSON API and OSV) are not reachable from the line's build machines;
the registry's simple index is (PEP 691 JSON). It says two things that matter: whether the installed release was
yanked (and why: yanked releases are how maintainers pull broken and vulnerable builds), and how far the installed
release is behind the newest. This prints one line per finding and a summary; with `--fail-on-yanked` a yanked
installed release fails the run (CI). docs/reliability.md keeps the triage of the findings.

    python scripts/audit_dependencies.py [--index URL] [--fail-on-yanked] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass
class Finding:
    name: str
    installed: str
    newest: str | None
    yanked: str | None  # the reason, "" when yanked without one; None when not yanked
    behind: str  # "current", "patch", "minor", "major", "unknown"
    error: str | None = None


def installed() -> dict[str, str]:
    """Every distribution in this environment but the project itself, by canonical name."""
    found = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name != "inspector":
            found[name] = dist.version
    return dict(sorted(found.items()))


def fetch(index: str, name: str, context: ssl.SSLContext) -> dict[str, object]:
    request = urllib.request.Request(f"{index.rstrip('/')}/{name}/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:
        return dict(json.load(answer))


def release_of(filename: str) -> str | None:
    """The version a distribution file belongs to (wheel or sdist name)."""
    if filename.endswith(".whl"):
        try:
            return str(parse_wheel_filename(filename)[1])
        except ValueError:
            return None
    match = re.match(r"^.+?-(\d[^-]*?)(\.tar\.gz|\.zip|\.tar\.bz2)$", filename)
    return match[1] if match else None


def audit(index: str, name: str, version: str, context: ssl.SSLContext) -> Finding:
    try:
        page = fetch(index, name, context)
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
        return Finding(name, version, None, None, "unknown", error=str(exc))
    files = [f for f in page.get("files", []) if isinstance(f, dict)]  # type: ignore[union-attr]
    mine = [f for f in files if release_of(str(f.get("filename", ""))) == version]
    yanks = [f.get("yanked") for f in mine if f.get("yanked")]
    yanked = (yanks[0] if isinstance(yanks[0], str) else "") if mine and len(yanks) == len(mine) else None
    stable = []
    for text in page.get("versions", []):  # type: ignore[union-attr]
        try:
            parsed = Version(str(text))
        except InvalidVersion:
            continue
        if not parsed.is_prerelease:
            stable.append(parsed)
    newest = max(stable) if stable else None
    return Finding(name, version, str(newest) if newest else None, yanked, _behind(version, newest))


def _behind(version: str, newest: Version | None) -> str:
    try:
        have = Version(version)
    except InvalidVersion:
        return "unknown"
    if newest is None or have >= newest:
        return "current"
    if have.major != newest.major:
        return "major"
    return "minor" if have.minor != newest.minor else "patch"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="https://pypi.org/simple", help="simple index (PEP 691 JSON)")
    parser.add_argument("--fail-on-yanked", action="store_true", help="exit 1 when an installed release is yanked")
    parser.add_argument("--json", help="write every finding to this file")
    args = parser.parse_args()

    context = ssl.create_default_context()
    packages = installed()
    with ThreadPoolExecutor(8) as pool:
        findings = list(pool.map(lambda item: audit(args.index, *item, context), packages.items()))
    unreachable = [f for f in findings if f.error]
    yanked = [f for f in findings if f.yanked is not None]
    for f in yanked:
        print(f"YANKED  {f.name} {f.installed}: {f.yanked or 'no reason given'} (newest {f.newest})")
    for f in (f for f in findings if f.behind == "major"):
        print(f"behind  {f.name} {f.installed} (newest {f.newest}: a major release behind)")
    for f in unreachable:
        print(f"unknown {f.name} {f.installed}: {f.error}")
    counts = {kind: sum(f.behind == kind for f in findings) for kind in ("current", "patch", "minor", "major")}
    print(
        f"{len(findings)} distributions: {len(yanked)} yanked, {counts['major']} a major release behind, "
        f"{counts['minor']} a minor one, {counts['patch']} a patch, {counts['current']} current; "
        f"{len(unreachable)} not found in the index"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(f) for f in findings], out, indent=1)
    if len(unreachable) == len(findings):
        print("the index could not be reached: nothing was audited", file=sys.stderr)
        return 0
    return 1 if args.fail_on_yanked and yanked else 0


if __name__ == "__main__":
    raise SystemExit(main())
