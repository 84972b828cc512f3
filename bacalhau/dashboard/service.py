"""The dashboard's side of a node: it gossips its requester's job snapshots, aggregates what every requester
gossips (store.py), asks requesters it hears of for the aggregates of their own jobs and their recent jobs (a
late joiner's catch-up: each requester's figures are disjoint, so they add up), and keeps the live list of nodes
from their NodeInfo.

Peers are hostile: a message is size-checked before parsing and checked field by field (events.py); a job event
is taken only from the requester it names, which must have said hello as a requester (and not have gossiped a
NodeInfo saying otherwise); each sender has a rate (token bucket) and the queue to the database is bounded, so
a flood costs dropped events, counted, and never memory or the node.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from bacalhau.dashboard import events as ev
from bacalhau.dashboard.store import DashboardStore
from bacalhau.errors import BacalhauError, ProtocolError
from bacalhau.models import Job, NodeInfo, NodeType

log = logging.getLogger(__name__)
QUEUE = 10_000               # events waiting for the database; past it they are dropped (and counted)
BATCH = 500                  # events written in one transaction
RATE = 200.0                 # events a second a sender may send, sustained
BURST = 2000.0
MAX_PEERS = 1000             # senders, requesters and nodes remembered (a flood of ids cannot grow them)
SYNC_TIMEOUT = 10.0
SYNC_CONCURRENCY = 4
ANSWER_INTERVAL = 1.0        # an asker gets at most one totals answer this often (each reads since its mark)
MAX_PUBLISHED = 10_000       # jobs whose last published snapshot is remembered (to skip repeats)
# a requester gossips what changed at most this often: the changes of a busy interval go out together, in as
# few messages as events.MAX_BATCH_* allow, and a job that changed several times meanwhile goes out once
PUBLISH_INTERVAL = 0.2
RETRY_AFTER = 1.0            # seconds before events dashboard.db could not take are written again
STORE_ERRORS = (sqlite3.Error, OSError)   # dashboard.db failing (its disk full): figures wait, the node goes on


class JobReader(Protocol):
    async def get_job(self, job_id: str, *, full: bool = True) -> Job: ...


class Publisher(Protocol):
    async def publish(self, topic: str, data: bytes) -> None: ...


class Dashboard:
    def __init__(self, *, node_id: str, store: DashboardStore, node_info_ttl: float, hello_interval: float,
                 jobs: JobReader | None = None, host: Any = None, transport: Any = None,
                 call_timeout: float = SYNC_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.store = store
        self.ttl = node_info_ttl
        self._hello_interval = hello_interval
        self._jobs = jobs                   # this node's requester's jobs (None: not a requester)
        self._host = host                   # the libp2p host (None: no gossip, as in-memory tests)
        self._transport = transport
        self._call_timeout = min(call_timeout, SYNC_TIMEOUT)
        self._clock = clock
        self._queue_send, self._queue_recv = trio.open_memory_channel[tuple[str, ev.JobEvent]](QUEUE)
        self._dirty: dict[str, None] = {}
        self._dirty_event = trio.Event()
        self._published: dict[str, str] = {}
        self._buckets: dict[str, tuple[float, float]] = {}    # sender -> (tokens, at)
        self.requesters: dict[str, float] = {}                  # who said hello as a requester -> when (wall)
        self._synced: set[str] = set()
        self._addrs: dict[str, list[str]] = {}     # requester -> its multiaddrs, from its hello
        self._cursor: dict[str, float] = {}        # requester -> its mark at the last catch-up (its clock)
        self._sync_interval = 2 * node_info_ttl
        self._sync_limiter = trio.CapacityLimiter(SYNC_CONCURRENCY)
        self._answering = trio.CapacityLimiter(1)              # totals answers, one at a time
        self._answered: dict[str, float] = {}                  # asker -> when it was last answered (trio)
        self._nodes: dict[str, dict[str, Any]] = {}            # node id -> what the page shows, last_seen wall
        self._not_requesters: set[str] = set()                  # NodeInfo senders that say they are not one
        self._ignored: set[str] = set()
        self.dropped = 0
        self.refused = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- lifetime -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Dashboard] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_loop)
            nursery.start_soon(self._sync_loop)
            if self._jobs is not None:
                if self._transport is not None:
                    self._transport.register(ev.SYNC_PROTOCOL, self._answer_sync)
                    self._transport.register(ev.TOTALS_PROTOCOL, self._answer_totals)
                nursery.start_soon(self._publish_loop)
            if self._host is not None:
                await nursery.start(self._listen)
                if self._jobs is not None:
                    nursery.start_soon(self._hello_loop)
            elif self._jobs is not None:
                self._hello_seen(ev.Hello(node_id=self.node_id, node_types=[NodeType.REQUESTER]))
            task_status.started(self)

    # -- what changes it ------------------------------------------------------------------------------------

    def job_changed(self, job_id: str) -> None:
        """The requester's hook: a job of this node changed (its snapshot is read and sent soon, once however
        many changes come meanwhile)."""
        self._dirty[job_id] = None
        self._dirty_event.set()

    def node_seen(self, info: NodeInfo) -> None:
        """A NodeInfo that passed the node's own checks (untrusted_node_info), or this node's own."""
        if NodeType.REQUESTER not in info.node_types:
            self._remember(self._not_requesters, info.node_id)
        entry = {"node_id": info.node_id, "node_types": [t.value for t in info.node_types],
                 "engines": [e.value for e in info.engines], "labels": {k[:63]: v[:255] for k, v in list(info.labels.items())[:16]},
                 "cpu_total": info.capacity_total.cpu, "cpu_free": info.capacity_free.cpu,
                 "memory_total": info.capacity_total.memory, "memory_free": info.capacity_free.memory,
                 "running": info.running, "queued": info.queued, "version": info.version[:40]}
        self._node_entry(info.node_id, entry)

    def _node_entry(self, node_id: str, entry: dict[str, Any]) -> None:
        known = self._nodes.get(node_id)
        if known is None and len(self._nodes) >= MAX_PEERS:
            self._expire_nodes()
            if len(self._nodes) >= MAX_PEERS:
                return
        self._nodes[node_id] = {**(known or {}), **entry, "last_seen": self._clock()}
        if known is None or any(known.get(k) != v for k, v in entry.items()):
            self._poke()

    def nodes(self) -> list[dict[str, Any]]:
        self._expire_nodes()
        return sorted(self._nodes.values(), key=lambda n: n["node_id"])

    def _expire_nodes(self) -> None:
        cutoff = self._clock() - self.ttl
        gone = [k for k, n in self._nodes.items() if n["last_seen"] < cutoff]
        for k in gone:
            del self._nodes[k]
        if gone:
            self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, timeout: float) -> None:
        """Returns at the next change of the figures or the node list, or after `timeout`."""
        changed = self._changed
        with trio.move_on_after(timeout):
            await changed.wait()

    # -- gossip in ------------------------------------------------------------------------------------------

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._host.subscribe(ev.DASHBOARD_TOPIC) as messages:
            task_status.started()
            async for origin, data in messages:
                self.receive(origin, data)

    def receive(self, sender: str, data: bytes) -> None:
        """One gossip message from `sender` (pubsub checked its signature). Never raises."""
        if sender == self.node_id:
            return      # our own: already taken when it was sent
        if not self._take_token(sender):
            self.dropped += 1
            return
        try:
            msg = ev.parse_message(data)
            if msg.hello is not None:
                ev.check_hello(msg.hello, sender)
                self._hello_seen(msg.hello)
                return
            if sender not in self.requesters:
                raise ev.Refused("a job event from a node that has not said it is a requester")
            if sender in self._not_requesters:
                raise ev.Refused("a job event from a node whose NodeInfo says it is no requester")
            if msg.job is not None:
                ev.check_event(msg.job, sender)
                self._enqueue(sender, msg.job)
                return
        except ev.Refused as exc:
            self.refused += 1
            self._ignore(sender, str(exc))
            return
        # a batch: each snapshot costs its token and passes its checks alone (the first took the message's)
        for i, event in enumerate(ev.batch_events(msg)):
            if i and not self._take_token(sender):
                self.dropped += 1
                continue
            try:
                if isinstance(event, ev.Refused):
                    raise event
                ev.check_event(event, sender)
            except ev.Refused as exc:
                self.refused += 1
                self._ignore(sender, str(exc))
                continue
            self._enqueue(sender, event)

    def _enqueue(self, sender: str, event: ev.JobEvent) -> None:
        try:
            self._queue_send.send_nowait((sender, event))
        except trio.WouldBlock:
            self.dropped += 1

    def _take_token(self, sender: str) -> bool:
        now = trio.current_time()
        tokens, at = self._buckets.get(sender, (BURST, now))
        tokens = min(BURST, tokens + (now - at) * RATE)
        if tokens < 1:
            self._buckets[sender] = (tokens, now)
            return False
        if sender not in self._buckets and len(self._buckets) >= MAX_PEERS:
            self._buckets.clear()       # a flood of fresh ids: each starts from a full bucket anyway
        self._buckets[sender] = (tokens - 1, now)
        return True

    def _ignore(self, sender: str, why: str) -> None:
        if sender not in self._ignored:
            self._remember(self._ignored, sender)
            log.warning("node %s ignored dashboard gossip from %s: %s", self.node_id, sender, why)

    @staticmethod
    def _remember(where: set[str], key: str) -> None:
        if len(where) >= MAX_PEERS:
            where.clear()
        where.add(key)

    def _hello_seen(self, hello: ev.Hello) -> None:
        if NodeType.REQUESTER not in hello.node_types:
            return
        if hello.node_id not in self.requesters and len(self.requesters) >= MAX_PEERS:
            return
        if len(self._addrs) >= MAX_PEERS and hello.node_id not in self._addrs:
            self._addrs.clear()
        self.requesters[hello.node_id] = self._clock()
        if hello.addrs:
            self._addrs[hello.node_id] = list(hello.addrs)
        self._node_entry(hello.node_id, {"node_id": hello.node_id,
                                         "node_types": [t.value for t in hello.node_types]})
        first = hello.node_id not in self._cursor and hello.node_id not in self._synced
        if hello.node_id != self.node_id and first and self._nursery is not None \
                and self._transport is not None:
            self._synced.add(hello.node_id)
            self._nursery.start_soon(self._sync_from, hello.node_id)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue_recv.receive()
            batch = [first[1]]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue_recv.receive_nowait()[1])
                except trio.WouldBlock:
                    break
            try:
                changed = await self.store.ingest(batch)
            except STORE_ERRORS as exc:    # peers' events: the catch-up brings them again
                log.warning("dashboard: %d events from peers not recorded: %s", len(batch), exc)
                continue
            if changed:
                self._poke()

    # -- catch-up: a requester's aggregates and recent jobs, asked for when it is first heard of and then every
    # few seconds (gossip is not reliable: what a peer published while the mesh formed, or while this node was
    # away, is caught here). Each requester is the only source of its own jobs, so per-requester aggregates are
    # disjoint: its jobs that ended up to a mark come as figures (a mark per requester, kept in dashboard.db),
    # the rest in detail; each ask goes on from the previous mark, so nothing falls between two)

    async def _sync_loop(self) -> None:
        if self._transport is None:
            return
        while True:
            await trio.sleep(self._sync_interval)
            log.debug("dashboard: catching up with %d requesters", len(self.requesters))
            cutoff = self._clock() - 3 * self.ttl
            for peer, heard in list(self.requesters.items()):
                if peer != self.node_id and heard >= cutoff and peer not in self._synced:
                    self._synced.add(peer)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._sync_from, peer)

    async def _sync_from(self, peer: str) -> None:
        """Ask a requester for the aggregates of its jobs that ended since the mark this node holds of it, and
        its recent and unfinished jobs in detail (store.apply_totals counts each job once)."""
        from bacalhau.bprotocol.framing import parse_reply

        async with self._sync_limiter:
            try:
                since = await self.store.mark_of(peer)
                request = ev.TotalsRequest(since=since)
                with trio.fail_after(self._call_timeout):
                    addrs = self._addrs.get(peer)
                    if self._host is not None and addrs and peer not in self._host.connected_peers():
                        await self._host.connect(addrs[0])
                    raw = await self._transport.call(peer, ev.TOTALS_PROTOCOL,
                                                     request.model_dump_json().encode(), timeout=self._call_timeout)
                reply = parse_reply(raw, ev.TotalsReply)
                ev.check_aggregate(reply.aggregate, since)
                for event in reply.events:
                    ev.check_event(event, peer)
            except ev.Refused as exc:
                self.refused += 1
                self._ignore(peer, f"catch-up: {exc}")
                return
            except (BacalhauError, trio.TooSlowError, ValueError, *STORE_ERRORS) as exc:
                log.info("dashboard: no totals from requester %s: %s", peer, exc)
                return
            finally:
                self._synced.discard(peer)      # one ask a requester at a time
            if len(self._cursor) >= MAX_PEERS and peer not in self._cursor:
                self._cursor.clear()
            self._cursor[peer] = reply.aggregate.upto
            try:
                applied = await self.store.apply_totals(peer, reply)
            except Exception as exc:    # a peer's answer that passed the checks yet fails here fails alone
                self.refused += 1
                self._ignore(peer, f"catch-up not stored: {type(exc).__name__}: {exc}")
                return
            if applied:
                self._poke()
        log.info("dashboard: requester %s: %d jobs ended up to %.0f, %d in detail", peer,
                 reply.aggregate.totals.get("jobs", 0), reply.aggregate.upto, len(reply.events))

    async def _answer_totals(self, peer_id: str, payload: bytes) -> bytes:
        from bacalhau.bprotocol.framing import decode, error_reply, ok_reply

        try:
            request = decode(payload, ev.TotalsRequest)
            now = trio.current_time()
            if now - self._answered.get(peer_id, -math.inf) < ANSWER_INTERVAL:
                raise ProtocolError(f"asked again within {ANSWER_INTERVAL:.0f} s")
            if peer_id not in self._answered and len(self._answered) >= MAX_PEERS:
                self._answered.clear()
            self._answered[peer_id] = now
            async with self._answering:
                reply = await self.store.totals_of(self.node_id, request.since, request.limit, self._clock(),
                                                   ev.MAX_SYNC_BYTES)
            return ok_reply(reply)
        except (BacalhauError, ValueError) as exc:
            return error_reply(exc)

    async def _answer_sync(self, peer_id: str, payload: bytes) -> bytes:
        from bacalhau.bprotocol.framing import decode, error_reply, ok_reply

        try:
            request = decode(payload, ev.SyncRequest)
            now = self._clock()
            rows = await self.store.jobs_of(self.node_id, request.since, request.limit)
            events, size = [], 0
            for row in rows:
                job_id = row.pop("id")
                event = ev.JobEvent.model_validate({**row, "job_id": job_id})
                size += len(event.model_dump_json())
                if size > ev.MAX_SYNC_BYTES:
                    break       # the newest first, as many as one reply frame holds
                events.append(event)
            return ok_reply(ev.SyncReply(events=events, now=now))
        except (BacalhauError, ValueError) as exc:
            return error_reply(exc)

    # -- gossip out (a requester) ---------------------------------------------------------------------------

    async def _hello_loop(self) -> None:
        while True:
            addrs = [a for a in self._host.listen_addrs if f"/p2p/{self.node_id}" in a][:8]
            hello = ev.Hello(node_id=self.node_id, node_types=[NodeType.REQUESTER], addrs=addrs)
            self._hello_seen(hello)
            self.requesters[self.node_id] = self._clock()
            self._node_entry(self.node_id, {"node_id": self.node_id})
            await self._host.publish(ev.DASHBOARD_TOPIC, ev.dump_hello(hello))
            await trio.sleep(self._hello_interval)

    async def _publish_loop(self) -> None:
        assert self._jobs is not None
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            dirty, self._dirty = self._dirty, {}
            events = []
            for job_id in dirty:
                try:
                    job = await self._jobs.get_job(job_id, full=False)
                except BacalhauError as exc:
                    log.info("dashboard: job %s not read: %s", job_id, exc)
                    continue
                event = ev.event_of(job, self.node_id)
                key = event.event_id + str(len(event.executions))
                if self._published.get(job_id) == key:
                    continue
                if len(self._published) >= MAX_PUBLISHED:
                    self._published.clear()
                self._published[job_id] = key
                events.append(event)
            try:
                changed = events and await self.store.ingest(events)   # one transaction for what changed meanwhile
            except STORE_ERRORS as exc:
                # dashboard.db cannot take them now (its disk full: a job filled it, the node frees that): the
                # node goes on, and these jobs are written again later
                log.warning("dashboard: %d job events not recorded, tried again in %gs: %s", len(events),
                            RETRY_AFTER, exc)
                for event in events:
                    self._published.pop(event.job_id, None)
                    self._dirty[event.job_id] = None
                await trio.sleep(RETRY_AFTER)
                self._dirty_event.set()
                continue
            if changed:
                self._poke()
            if self._host is not None and events:
                for message in ev.dump_batches(events):
                    await self._host.publish(ev.DASHBOARD_TOPIC, message)
                await trio.sleep(PUBLISH_INTERVAL)
