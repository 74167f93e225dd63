"""Projections: read models kept up to date from ``$all``, exactly once.

A :class:`Projection` says which events it wants and how each one changes its
read model (documents, and on SQL backends its own tables through
``txn.sql``). A :class:`ProjectionRunner` runs several side by side, each on
its own thread, in a loop:

1. read a batch of wanted events after the projection's checkpoint;
2. apply them with ``backend.project(name, checkpoint, new_checkpoint,
   apply)``: the read-model writes and the new checkpoint commit in **one**
   transaction, and only if the checkpoint is still where the runner read it
   (compare-and-set);
3. when there is nothing new, block in ``backend.wait_for_events`` (no busy
   polling) and go to 1.

So a runner killed at any point leaves the read model and the checkpoint
consistent with each other: a batch is applied whole, with its checkpoint, or
not at all, and the restarted runner resumes after the stored checkpoint.
Two runners of the same projection cannot both advance it: the second one's
compare-and-set fails with ``ProjectionConflict`` and nothing of its batch is
applied; it backs off and re-reads the checkpoint.

Checkpoint 0 means "nothing applied yet": every transaction that starts from
0 first calls :meth:`Projection.reset`, where a projection with SQL tables
creates or empties them.

A rebuild must end exactly where a fresh projection would. The runner keeps,
with each projection, a description of its read model (see
:mod:`unbundled.eventstore._read_model`): the collections it declared or
wrote, whether it ran SQL, whether it has ``reset()``. A rebuild (API or CLI)
empties those collections, calls ``reset()`` and moves the checkpoint to 0
in one transaction, or refuses with nothing changed when SQL tables could
not be emptied. A runner that is applying a batch meanwhile loses its
compare-and-set, and one that waits for events is woken: both replay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

from .. import limits
from .._bounds import check_int, check_seconds
from ..errors import Error, NotFound, ProjectionConflict, UsageError
from ._base import EventStoreBase, StoredEvent
from ._protocol import ProjectionTxn
from ._read_model import DESCRIPTIONS, Description, TrackedTxn, check_collection, load, merged
from ._read_model import reset_read_model as _reset_read_model
from .serialization import Event
from .subscriptions import WAIT_SLICE_S

BATCH_SIZE = 256  # events per transaction: on SQLite a batch holds the write lock
CONFLICT_BACKOFF_S = 0.5  # after losing a race with another runner of the same projection
RETRY_BACKOFF_S = 0.2  # after a retryable backend error (busy, unavailable)


class Projection:
    """A read model built from events. Subclass it::

        class Balances(Projection):
            name = "balances"
            categories = ("account",)
            collections = ("balances",)

            def handle(self, event, txn):
                ...

    ``name`` identifies the checkpoint (keep it stable across releases; a
    new name means a new projection built from scratch). ``categories`` and
    ``types`` filter the events (``None``: all). ``collections`` are the
    document collections the projection owns; a rebuild empties them, and
    any other collection its handlers write to (the runner records them).
    A collection belongs to one projection: rebuilding one empties it.
    """

    name: ClassVar[str] = ""
    categories: ClassVar[Sequence[str] | None] = None
    types: ClassVar[Sequence[str | type[Event]] | None] = None
    collections: ClassVar[Sequence[str]] = ()

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        """Apply one event to the read model, inside the batch's transaction.

        Keep it deterministic and use only ``txn`` for state: anything else
        (sending an e-mail, a dict in memory) is not rolled back when the
        batch fails, and runs again when a batch is retried. Raising an
        exception rolls back the whole batch and stops this projection.
        """
        raise NotImplementedError

    def reset(self, txn: ProjectionTxn) -> None:
        """Called in the transaction of the first batch from checkpoint 0 (the
        first run, and after a rebuild) and in the rebuild's own transaction:
        create or empty SQL tables here. A projection that writes SQL tables
        without a ``reset()`` cannot be rebuilt (``UsageError``): its tables
        would get every event twice. Documents are emptied by the rebuild."""


def has_reset(projection: Projection) -> bool:
    """Whether ``projection`` defines its own :meth:`Projection.reset`."""
    return type(projection).reset is not Projection.reset


@dataclass(frozen=True)
class ProjectionStatus:
    """Where a projection is. ``lag`` is ``safe_position - checkpoint``: the
    events (of any category) it has not yet looked at."""

    name: str
    checkpoint: int
    safe_position: int
    lag: int
    running: bool  # its thread in this runner is alive
    applied: int  # events applied by this runner since it started
    conflicts: int  # batches lost to another runner (ProjectionConflict)
    error: BaseException | None  # why it stopped, if it failed


class _Worker:
    """One projection's loop on its own thread."""

    def __init__(self, runner: ProjectionRunner, projection: Projection) -> None:
        self.runner = runner
        self.projection = projection
        self.name = projection.name
        store = runner.store
        self.categories = list(projection.categories) if projection.categories else None
        if projection.categories is not None and not self.categories:
            raise UsageError(f"projection {self.name!r} wants no category at all")
        self.types = store._type_names(projection.types)
        self.filtered = projection.categories is not None or projection.types is not None
        self.applied = 0
        self.conflicts = 0
        self.error: BaseException | None = None
        self.checkpoint: int | None = None  # None: read it from the backend
        self.reload = threading.Event()  # set by rebuild(): re-read the checkpoint
        self.thread: threading.Thread | None = None
        if isinstance(projection.collections, str):  # ("balances") without its comma
            raise UsageError(
                f"projection {self.name!r}: collections is a sequence of names, "
                f"got the string {projection.collections!r}",
                projection=self.name,
            )
        self.declared = [check_collection(c) for c in projection.collections]
        self.has_reset = has_reset(projection)
        self.described = False  # the stored description covers this code's

    def start(self) -> None:
        self.error = None
        self.checkpoint = None
        self.described = False
        self.thread = threading.Thread(
            target=self.run, name=f"unbundled-projection:{self.name}", daemon=True
        )
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def step(self) -> bool:
        """Apply the next batch; False if there was nothing to apply."""
        backend = self.runner.store.backend
        if self.checkpoint is None or self.reload.is_set():
            self.reload.clear()
            self.checkpoint = backend.checkpoints().get(self.name, 0)
        checkpoint = self.checkpoint
        batch_size = self.runner.batch_size
        # A filtered read that returns less than a full batch has seen every
        # wanted event up to the safe position taken before it, so the
        # checkpoint may move there even past unwanted events (and lag is 0).
        safe = backend.safe_position() if self.filtered else 0
        rows = backend.read_all(checkpoint, batch_size, self.categories, self.types)
        reached = rows[-1].position if rows else checkpoint
        if self.filtered and len(rows) < batch_size:
            reached = max(reached, safe)
        if reached == checkpoint:
            return self._describe(checkpoint)
        decode = self.runner.store._decode
        events = [decode(r) for r in rows]  # outside the transaction: it holds the write lock
        projection = self.projection

        def apply(txn: ProjectionTxn) -> None:
            tracked = TrackedTxn(txn, self.name, self.declared, self.has_reset)
            if checkpoint == 0:
                projection.reset(tracked)
            for event in events:
                projection.handle(event, tracked)
            tracked.save()

        backend.project(self.name, checkpoint, reached, apply)
        self.checkpoint = reached
        self.described = True
        self.applied += len(events)
        return True

    def _describe(self, checkpoint: int) -> bool:
        """With nothing to apply: store the description of what this code
        declares if it is not stored yet (so a rebuild from the CLI knows
        it). True if that took a transaction (a step, though not a batch)."""
        if self.described:
            return False
        backend = self.runner.store.backend
        stored = load(self.name, backend.get_document(DESCRIPTIONS, self.name))
        self.described = True
        if stored == merged(stored, self.declared, False, self.has_reset):
            return False

        def describe(txn: ProjectionTxn) -> None:
            TrackedTxn(txn, self.name, self.declared, self.has_reset).save()

        backend.project(self.name, checkpoint, checkpoint, describe)
        return True

    def run(self) -> None:
        stopping = self.runner._stopping
        backend = self.runner.store.backend
        while not stopping.is_set():
            # Taken before the step reads anything: a commit after this point
            # moves it, and the wait below returns at once.
            token = backend.events_change_token()
            try:
                if self.step():
                    continue
                # Nothing new after the checkpoint this worker keeps. A rebuild
                # elsewhere that committed after its last batch (before the
                # token above was taken) reset the stored one: sleeping on the
                # kept one would sleep through the rebuild until the next append.
                if backend.checkpoints().get(self.name, 0) != self.checkpoint:
                    self.checkpoint = None
                    continue
                self._wait(token)
            except ProjectionConflict:
                # Another runner advanced it: nothing of ours was applied.
                self.conflicts += 1
                self.checkpoint = None
                stopping.wait(self.runner.conflict_backoff_s)
            except Error as exc:
                if not exc.retryable:
                    self.error = exc
                    return
                self.checkpoint = None
                stopping.wait(RETRY_BACKOFF_S)
            except BaseException as exc:  # the handler's bug: stop this projection only
                self.error = exc
                return

    def _wait(self, token: int) -> None:
        """Until a commit moves the token, a rebuild, or stop()."""
        stopping = self.runner._stopping
        backend = self.runner.store.backend
        while not stopping.is_set() and not self.reload.is_set():
            self.runner.store._check_open()  # a closed backend returns at once: do not spin
            moved = backend.wait_for_events(token, WAIT_SLICE_S)
            if moved != token:
                # Also re-read the checkpoint: a rebuild elsewhere may have reset it.
                self.checkpoint = None
                return


class ProjectionRunner:
    """Runs projections side by side over one event store, each on its own thread::

        with store.projections(Balances(), Totals()) as runner:  # starts; stops on exit
            runner.wait_caught_up(10.0)

    A projection whose handler raises stops (the failed batch leaves nothing
    behind); :meth:`status` reports the error and the others keep running.
    Restarting a runner, in this process or another, resumes every
    projection from its stored checkpoint.
    """

    def __init__(
        self,
        store: EventStoreBase,
        projections: Sequence[Projection],
        *,
        batch_size: int = BATCH_SIZE,
        conflict_backoff_s: float = CONFLICT_BACKOFF_S,
    ) -> None:
        check_int("batch_size", batch_size, 1, limits.read_events_max)
        check_seconds("conflict_backoff_s", conflict_backoff_s)
        store._check_open()
        self.store = store
        self.batch_size = batch_size
        self.conflict_backoff_s = conflict_backoff_s
        self._stopping = threading.Event()
        self._started = False
        self._workers: dict[str, _Worker] = {}
        for projection in projections:
            if not isinstance(projection, Projection):
                raise UsageError(f"{projection!r} is not a Projection instance")
            name = projection.name
            if type(name) is not str or not name:
                raise UsageError(f"{type(projection).__name__} has no name")
            if name in self._workers:
                raise UsageError(f"two projections are named {name!r}")
            worker = _Worker(self, projection)
            for other in self._workers.values():
                shared = sorted(set(worker.declared) & set(other.declared))
                if shared:
                    raise UsageError(
                        f"projections {other.name!r} and {name!r} both own collection "
                        f"{shared[0]!r}: rebuilding one would empty the other's documents",
                        collection=shared[0],
                    )
            self._workers[name] = worker

    @property
    def names(self) -> list[str]:
        """The names of the runner's projections, in the order given."""
        return list(self._workers)

    def start(self) -> ProjectionRunner:
        """Start a thread per projection (each resumes from its checkpoint)."""
        self.store._check_open()
        if self._started:
            raise UsageError("the runner is already running")
        self._stopping.clear()
        self._started = True
        for worker in self._workers.values():
            worker.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every projection after its current batch and wait for the threads."""
        check_seconds("timeout_s", timeout_s)
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers.values():
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        self._started = False

    close = stop

    def __enter__(self) -> ProjectionRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _worker(self, name: str) -> _Worker:
        worker = self._workers.get(name)
        if worker is None:
            raise UsageError(f"no projection named {name!r} in this runner", projection=name)
        return worker

    # --- without threads --------------------------------------------------------

    def catch_up(self, name: str | None = None) -> int:
        """Apply, on the calling thread, every wanted event up to now to
        ``name`` (or every projection); returns how many were applied.
        Raises the handler's error, or ``ProjectionConflict`` if another
        runner moves the checkpoint meanwhile. For scripts and tests; a
        running runner does this on its threads."""
        if self._started:
            raise UsageError("catch_up() is for a runner that is not running")
        workers = [self._worker(name)] if name is not None else list(self._workers.values())
        applied = 0
        for worker in workers:
            before = worker.applied
            worker.checkpoint = None
            while worker.step():
                pass
            applied += worker.applied - before
        return applied

    def rebuild(self, name: str) -> None:
        """Rebuild projection ``name`` from the first event: in one
        transaction, empty every collection of its read model (declared, or
        written by it: the runner records them), call its
        :meth:`Projection.reset` and move its checkpoint to 0; then replay
        (on its thread if the runner is running, else at the next
        :meth:`start` or :meth:`catch_up`). It ends where a fresh projection
        would, even while runners of it run here or in other processes.

        Raises ``UsageError``, changing nothing, if the projection wrote SQL
        tables and defines no ``reset()`` to empty them."""
        worker = self._worker(name)
        projection = worker.projection

        def reset(txn: ProjectionTxn) -> None:
            _reset_read_model(
                txn,
                name,
                declared=worker.declared,
                reset=projection.reset,
                has_reset=worker.has_reset,
            )

        self.store._check_open()
        self.store.backend.reset_projection(name, (), reset)
        worker.checkpoint = None
        worker.reload.set()
        if worker.error is not None and self._started and not worker.running:
            worker.start()  # a rebuild is how a fixed projection gets a fresh start

    # --- observing ------------------------------------------------------------

    def status(self) -> dict[str, ProjectionStatus]:
        """Each projection's checkpoint, lag, and whether it runs or failed."""
        backend = self.store.backend
        safe = backend.safe_position()  # first: so lag is never negative
        checkpoints = backend.checkpoints()
        out = {}
        for name, worker in self._workers.items():
            checkpoint = checkpoints.get(name, 0)
            out[name] = ProjectionStatus(
                name,
                checkpoint,
                safe,
                max(0, safe - checkpoint),
                worker.running,
                worker.applied,
                worker.conflicts,
                worker.error,
            )
        return out

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        """Block until every projection has looked at every event committed
        before the call (lag 0 as of then); False on timeout. Raises the
        error of a projection that failed meanwhile."""
        check_seconds("timeout_s", timeout_s)
        target = self.store.backend.safe_position()
        deadline = time.monotonic() + timeout_s
        backend = self.store.backend
        token = backend.events_change_token()
        while True:
            self.store._check_open()
            for worker in self._workers.values():
                if worker.error is not None:
                    raise worker.error
            checkpoints = backend.checkpoints()
            if all(checkpoints.get(name, 0) >= target for name in self._workers):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Checkpoint commits move the token on SQLite; the memory backend
            # moves it only for events, hence the short slices.
            token = backend.wait_for_events(token, min(remaining, WAIT_SLICE_S / 2))


def rebuild_projection(
    store: EventStoreBase, name: str, *, collections: Sequence[str] = ()
) -> Description:
    """Reset projection ``name`` to be rebuilt by its runner, without its
    :class:`Projection` class (for tools and the CLI): in one transaction,
    empty every collection its stored description names (and
    ``collections``) and move its checkpoint to 0. Its runner, wherever it
    runs, then replays every event, calling ``reset()`` first. Returns the
    description. ``NotFound`` for an unknown projection; ``UsageError``,
    changing nothing, if it was never described (its runner has not run
    with this version) or writes SQL tables without a ``reset()``."""
    store._check_open()
    backend = store.backend
    known = backend.checkpoints()
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise NotFound(f"no projection named {name!r} (known: {names})", projection=name)
    done: list[Description] = []

    def reset(txn: ProjectionTxn) -> None:
        done.append(_reset_read_model(txn, name, extra=collections))

    backend.reset_projection(name, (), reset)
    return done[-1]


def projection_status(store: EventStoreBase) -> dict[str, ProjectionStatus]:
    """Checkpoint and lag of every projection the store has a checkpoint for
    (whichever process runs it), without a runner: for tools and the CLI."""
    backend = store.backend
    safe = backend.safe_position()
    return {
        name: ProjectionStatus(name, checkpoint, safe, max(0, safe - checkpoint), False, 0, 0, None)
        for name, checkpoint in sorted(backend.checkpoints().items())
    }


__all__ = [
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "projection_status",
    "rebuild_projection",
]
