"""The NATS backend (nats-py): the linearizable key-value store and
idempotency keys (``_idempotency``) on a JetStream KV bucket, the log on
JetStream streams (``_log``, ``_log_groups``, ``_log_meta``; its guarantees
are in docs/explanation/log.md, "On NATS JetStream") and the event store on
one more (``_events``).

* ``nats://[user:password@]host:port?bucket=name&replicas=N`` (default bucket
  ``unbundled``, one replica): the bucket is created if missing (history 1,
  file storage, ``replicas`` replicas, as are the log's streams). A bucket with a
  TTL is refused: expiring messages would take tombstones, and with them
  versions, away.
* nats-py is asyncio-only: each backend runs one event loop in a daemon
  thread, and the sync methods hand it coroutines
  (``asyncio.run_coroutine_threadsafe``), so one backend serves many threads
  over one connection. ``close()`` drains the connection and stops the loop.
* After the first connection, nats-py reconnects by itself for ever; an
  operation that meets no connection raises ``Unavailable``, one that gets no
  answer within ``timeout_s`` raises ``Timeout``; either may or may not have
  taken effect.
* Linearizable (``_kv`` says how) on one server, and on a cluster as long as
  the stream leader answers: changes and reads both go to it. A leader cut
  off from its cluster may answer reads until it learns it was replaced
  (NATS has no read lease), so under partitions a read can be stale.
* Durability is the server's: an acknowledged change is in the stream (in
  the OS's page cache on one server: it survives the server's crash but,
  unless the server syncs every write, not the machine's; on an R3 stream
  it is on a majority). ``sync`` is accepted for the same signature as the
  other backends and changes nothing.

* The log: a stream per partition, named after the bucket; the catalog,
  producers and groups are documents in the bucket. Batches are published in
  order with message ids (no atomic batch before NATS 2.12); records and
  offset commits never share a transaction (``NotSupported``). ``clock``
  decides leases and retention; ``dedupe_window_s`` is the duplicate window
  of the streams it creates.

* The event store: every event stream a subject of one stream,
  ``UBES_<bucket>`` (``_events``, ``_events_read``, ``_events_meta``; its
  guarantees are in docs/explanation/eventstore.md, "On NATS JetStream").
  An append is one message (atomic) published with
  ``Nats-Expected-Last-Sequence``, so expected versions hold and positions
  are dense and in commit order across processes; an append to several
  streams and projections (a read model with its checkpoint) raise
  ``NotSupported``. Snapshots and subject keys are documents in the bucket.
"""

from __future__ import annotations

from ._backend import NatsBackend as NatsBackend
from ._destroy import destroy as destroy
from ._kv import decode_key as decode_key
from ._kv import encode_key as encode_key

__all__ = ["NatsBackend", "decode_key", "destroy", "encode_key"]
