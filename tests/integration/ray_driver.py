"""A tiny Ray driver run as a subprocess by the stack tests (one cluster per process).

usage: python ray_driver.py GCS_ADDRESS NODE_IP create|inc
  create: a detached, named Counter pinned to node NODE_IP; prints its count after 2 incs
  inc:    finds the Counter by name, increments, prints the count
"""

from __future__ import annotations

import sys

import ray


@ray.remote(num_cpus=1, max_restarts=0)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n


def main() -> None:
    gcs, node_ip, mode = sys.argv[1:4]
    ray.init(address=gcs, namespace="stack-test", _node_ip_address=node_ip, log_to_driver=False)
    if mode == "create":
        counter = Counter.options(  # type: ignore[attr-defined]
            name="counter", lifetime="detached", resources={f"node:{node_ip}": 0.01}
        ).remote()
        ray.get(counter.inc.remote())
        print(ray.get(counter.inc.remote()))
    else:
        counter = ray.get_actor("counter")
        print(ray.get(counter.inc.remote(), timeout=30))


if __name__ == "__main__":
    main()
