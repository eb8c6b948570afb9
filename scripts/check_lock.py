"""Check that the venv holds exactly what the lock pins.

Every installed distribution (but the editable datamoat itself) must be pinned
in the lock at its installed version, and every pin must be installed: a fresh
`make install` then reproduces the environment the suite passed with.

    python scripts/check_lock.py requirements.lock

With --subset, pins need not be installed: the server image installs only the
server's own dependencies (the lock pins the dev tools too), and this proves
that nothing outside the lock, or at another version, came in with them.

    python scripts/check_lock.py --subset requirements.lock
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#\\]+)", re.M)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str, subset: bool = False) -> int:
    pins = {canon(m.group(1)): m.group(2) for m in PIN.finditer(Path(lock).read_text())}
    installed = {}
    for dist in metadata.distributions():
        name = canon(dist.metadata["Name"])
        if name != "datamoat":
            installed[name] = dist.version
    problems = [
        f"{name}=={ver} is installed but {lock} pins {pins[name]}"
        if name in pins
        else f"{name}=={ver} is not in {lock}"
        for name, ver in sorted(installed.items())
        if pins.get(name) != ver
    ]
    missing = [] if subset else [name for name in pins if name not in installed]
    problems += [f"{name}=={pins[name]} is pinned in {lock} but not installed" for name in missing]
    for p in problems:
        print(f"lock: {p}", file=sys.stderr)
    if problems:
        fix = "pin it there (`make lock`)" if subset else "`make clean install` rebuilds it from the lock"
        print(f"lock: the venv differs from {lock}: {fix}", file=sys.stderr)
        return 1
    print(f"lock: all {len(installed)} installed distributions match {lock}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    subset = "--subset" in args
    args = [a for a in args if a != "--subset"]
    sys.exit(main(args[0] if args else "requirements.lock", subset))
