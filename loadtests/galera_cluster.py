"""Start a three-node MariaDB Galera cluster on this machine and keep it up
until Ctrl-C (testkit/galera.py does the work; the tests and the
several-nodes drill use the same launcher):

    python -m loadtests.galera_cluster [--nodes 3] [--database ps]

It prints the sink.url that lists every node, then each node's state every
10 s. Runs as root (the nodes run as user `mysql`); needs galera-4 and rsync.
"""

from __future__ import annotations

import argparse
import time

from testkit.galera import GaleraCluster, available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--database", default="ps")
    args = parser.parse_args()
    if not available():
        raise SystemExit("galera-4, mariadbd, rsync and a `mysql` user are needed (apt-get install galera-4 rsync)")
    cluster = GaleraCluster.create(args.nodes)
    try:
        started = time.monotonic()
        cluster.start()
        print(f"cluster of {cluster.size()} nodes up in {time.monotonic() - started:.1f} s (in {cluster.folder})")
        print(f'sink.url = "{cluster.url(args.database)}"', flush=True)
        while True:
            time.sleep(10)
            states = [node.status("wsrep_local_state_comment") or "down" for node in cluster.nodes]
            print("nodes: " + ", ".join(f"node{i} {s}" for i, s in enumerate(states)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
