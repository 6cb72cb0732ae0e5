"""python -m tests.lab up|down|env [--nodes N] [--fresh]"""

import argparse
import sys

from tests.lab import lab


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab", description=lab.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("--nodes", type=int, default=lab.MAX_NODES)
    p.add_argument("--fresh", action="store_true", help="wipe the nodes' homes first")
    args = p.parse_args()
    if args.action == "up":
        for n in lab.up(args.nodes, fresh=args.fresh):
            print(f"{n.name}: {n.user}@{n.address}:{n.port} (hive port {n.hive_port})")
    elif args.action == "down":
        lab.down()
    for key, value in lab.env().items():
        if args.action != "down":
            print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
