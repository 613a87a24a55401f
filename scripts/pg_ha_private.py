"""Install the HA manager for ``nox -s failover``: Debian's ``patroni`` and ``etcd-server``.

``python scripts/pg_ha_private.py install`` apt-gets both (as root) when ``/usr/bin/patroni``
or ``/usr/bin/etcd`` is missing, and prints their versions. The cluster itself is started by
the failover test (tests/failover/patroni_cluster.py): etcd and two Patroni nodes on free
loopback ports, in a temporary folder of their own; nothing here starts a service or touches
the shared servers.

Patroni + etcd rather than pg_auto_failover (``postgresql-15-auto-failover``, also in
Debian): with ``synchronous_mode`` Patroni promotes only the standby that the DCS names as
synchronous, under a single leader key with a TTL; pg_auto_failover needs a third PostgreSQL
as its monitor. The Debian images keep services from starting at install time
(``policy-rc.d``), and where one does start, on etcd's default ports, the test's own etcd
still uses free ports of its own.

Exit status: 0 when both are installed. When they cannot be installed: 1 under ``CI=true``
(a missing tool fails CI); otherwise 0 after a loud message, and the failover test skips.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The binary each Debian package provides.
PACKAGES = {"patroni": "/usr/bin/patroni", "etcd-server": "/usr/bin/etcd"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Unavailable(RuntimeError):
    """A package is missing and could not be installed."""


def missing() -> list[str]:
    return [package for package, binary in PACKAGES.items() if not Path(binary).is_file()]


def install() -> None:
    """apt-get install what is missing; raise ``Unavailable`` when that cannot be done."""
    wanted = missing()
    if not wanted:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{', '.join(wanted)} not installed, and installing needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(wanted)} not installed, and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    still = missing()
    if still:
        raise Unavailable(f"apt-get ran, but {', '.join(still)} is still missing")


def versions() -> str:
    found = []
    for binary in PACKAGES.values():
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
        found.append(done.stdout.strip().splitlines()[0] if done.stdout.strip() else binary)
    return "; ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["install"])
    parser.parse_args()
    try:
        install()
    except Unavailable as error:
        print(f"\n*** Patroni/etcd unavailable: {error} ***\n", file=sys.stderr)
        return 1 if IN_CI else 0
    print(f"HA manager installed: {versions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
