"""p2prt in one page: the Ray-style task API on the embedded local cluster.

    python3 examples/quickstart.py

``p2prt.init()`` with no cluster starts a board and a worker on 127.0.0.1 (real
sockets, real Noise encryption, a throwaway identity) and removes them at shutdown.
Name a cluster instead (``p2prt.init("alice/friends")``) and the same code runs on
your friends' machines: see docs/personal-cluster.md and docs/shared-cluster.md.
"""

import time

import p2prt

info = p2prt.init()  # no cluster named: an embedded local cluster
print(f"connected to {info.cluster} (embedded: {info.embedded})")


@p2prt.remote
def square(x):
    return x * x


@p2prt.remote
def total(numbers, extra=0):
    return sum(numbers) + extra


@p2prt.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@p2prt.remote(max_retries=0)
def divide(a, b):
    return a / b


# .remote() returns an ObjectRef at once; get() waits for the values, in order.
refs = [square.remote(i) for i in range(10)]
squares = p2prt.get(refs)
print("squares:", squares)

# A ref passed as an argument is resolved before the task runs: total() starts
# only when square(10) has finished, and receives its value (100).
print("sum of squares 0..10:", p2prt.get(total.remote(squares, square.remote(10))))

# put() stores a value once in this process; pass its ref to as many tasks as you like.
numbers = p2prt.put(list(range(1000)))
print("sum via put:", p2prt.get(total.remote(numbers)))

# wait() returns the refs that are ready and the ones that are not.
fast, slow = nap.remote(0.05), nap.remote(1.0)
ready, not_ready = p2prt.wait([slow, fast], num_returns=1)
print(f"ready first: {p2prt.get(ready)}; still running: {len(not_ready)}")

# A task's exception comes back as its own type (it is also a p2prt.TaskError,
# and its message holds the remote traceback).
try:
    p2prt.get(divide.remote(1, 0))
except ZeroDivisionError as exc:
    print("caught ZeroDivisionError:", str(exc).splitlines()[0])

p2prt.shutdown()
print("done")
