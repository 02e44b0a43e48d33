"""The DHT layer: a Kademlia node per process, bridged from trio to asyncio.

Peers find each other's addresses, and the holders of large objects, through signed
records in a Kademlia DHT (the ``kademlia`` package, UDP). The records themselves are
sans-IO and live in :mod:`p2prt.wire.records`; this package runs the network part.

- :mod:`.node` — :func:`open_dht_node` and :class:`DhtNode`: publish and find
  :class:`~p2prt.wire.records.PeerRecord` and :class:`~p2prt.wire.records.ObjectLocation`,
  republished before they expire; client mode; statistics.
- :mod:`._bridge` — :class:`LoopThread`: the asyncio loop in its own thread, awaited from
  trio without blocking a thread, with cancellation passed on.
- :mod:`._protocol` — the Kademlia protocol subclass every p2prt node runs: client mode
  (an empty sender id: "answer me, do not add me"), hostile-input hardening, and the
  verifying lookup (:class:`RecordCrawl`).
- :mod:`._storage` — :class:`RecordStorage`, the ``IStorage`` that keeps only verified
  records, newest ``seq`` per key.

For the runtime (board, worker, client):

- The board runs ``open_dht_node(board_identity, host, port)`` with no bootstrap and
  puts ``node.address`` in its hello; every other process passes that address as
  ``bootstrap``. Bind the address the process reaches the board from (never 0.0.0.0).
- Workers with a reachable address serve (``serve=True``); scripts and nodes behind NAT
  use ``serve=False``.
- After connecting to the board: ``await node.publish_peer(listen_addrs, observed)``.
  To reach a leased worker: ``await node.find_peer(worker_peer_id)``; ``None`` means
  ask the board. Pass ``allowed`` (a certificate → bool check of user *and* SSH key
  against the cluster's members) to refuse outsiders.
- A large object's holder: ``await node.publish_location(object_id, size)``, and
  ``await node.remove_location(object_id)`` when it frees it. A fetcher:
  ``await node.find_location(object_id)`` then ``find_peer(location.holder)``.
- Lookups cost a few UDP round trips; cache results per connection, not per task.
"""

from .node import DhtNode, DhtSettings, DhtStatistics, addresses_of, open_dht_node

__all__ = ["DhtNode", "DhtSettings", "DhtStatistics", "addresses_of", "open_dht_node"]
