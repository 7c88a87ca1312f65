"""
Which instance serves which project: a lease per project in the database
(table C{project_owner}: owner, lease_until), so that instances sharing a
PostgreSQL database serve each project from exactly one of them.

Every tick, an instance (L{Leases}), in one transaction timed by the
database's clock (L{ockamtw.orchestrator.store.Store.lease_tick}): says it
is alive, renews its leases (for C{ttl} seconds), and reads which projects
have no live lease.  It then:

  - stops the projects it serves whose lease it did not renew (taken, or
    being deleted: it then deletes them);
  - claims projects nobody holds (no lease, or one that ran out), up to
    its fair share (the projects over the live instances, rounded up),
    in random order, and serves those it won; when a lease held elsewhere
    runs out before the next tick, it takes an extra turn just after (so a
    crashed instance's projects move within the lease time and a turn,
    not up to a tick later);
  - never serves a project past its lease: a project is stopped at the
    local time its last renewal was I{sent} plus C{ttl} minus a margin,
    unless a later renewal succeeded.  An instance that cannot reach the
    database thus stops serving before any other can claim the project,
    whatever the database does meanwhile; no two instances ever serve one
    project.  (The lease runs on the database's clock from a moment after
    the renewal was sent; only the rates of the two clocks matter.)

A project's lease is given up when the instance stops (so a restart takes
over at once), not when it crashes: then the project moves to another
instance once its lease runs out: within C{ttl} and a turn.  A project
stays where it is: an instance that starts or comes back takes only
projects no one serves (no rebalancing).
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..errors import OckamError
from .store import StoreError

log = Logger(namespace="ockamtw.orchestrator.leases")

#: Default lease time (seconds) and tick (how often leases are renewed).
LEASE_TTL = 15.0
TICK = 2.0
#: Ticks to wait before trying again to serve a project that failed to start here.
START_BACKOFF_TICKS = 5
#: Claims in one turn when instances claiming at once take some of the
#: projects asked for.
CLAIM_ROUNDS = 4
#: Seconds after another instance's lease runs out (by the database's
#: clock) that an extra turn claims it.
WAKE_AFTER = 0.01


class Leases(Service):
    """
    The lease loop of one L{ockamtw.orchestrator.service.Orchestrator}.

    @ivar valid_until: project id -> the local time until which this
        instance may serve it.
    """

    def __init__(self, orchestrator, clock, ttl: float = LEASE_TTL, tick: float = TICK,
                 margin: Optional[float] = None) -> None:
        if tick <= 0 or ttl <= 0:
            raise ValueError("the lease time and the tick must be positive")
        if tick * 2 >= ttl:
            raise ValueError(f"the tick ({tick:g} s) must be under half the lease time ({ttl:g} s)")
        self.o = orchestrator
        self.clock = clock
        self.ttl = ttl
        self.tick = tick
        #: how long before its lease runs out a project not renewed stops
        self.margin = min(ttl / 5, tick) if margin is None else margin
        self.valid_until: Dict[str, float] = {}
        #: project id -> the local time its lease was taken outside a turn
        #: (a turn that began before does not know it yet)
        self._taken: Dict[str, float] = {}
        self._loop: Optional[LoopingCall] = None
        self._safety = None
        #: an extra turn when a lease held elsewhere runs out before the next tick
        self._wake = None
        self._turn: Optional[Deferred] = None
        #: project id -> ticks to wait before claiming it again
        self._backoff: Dict[str, int] = {}
        #: fires after the first turn, whether it reached the database or not
        self.first: Deferred = Deferred()
        #: the last turn reached the database
        self.healthy = False
        self.turns = 0

    # --- the service ---------------------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._run_turn)
        self._loop.clock = self.clock
        self._loop.start(self.tick, now=True)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._disarm()
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        turn = self._turn
        return succeed(None) if turn is None else turn

    # --- one turn ---------------------------------------------------------------------------------------

    def _run_turn(self) -> Deferred:
        d = Deferred.fromCoroutine(self._turn_once())
        self._turn = d

        def done(result):
            self._turn = None
            if not self.first.called:
                self.first.callback(None)
            return None

        d.addErrback(self._failed)
        d.addBoth(done)
        return d

    def _failed(self, f) -> None:
        if f.check(StoreError):
            if self.healthy or not self.turns:
                log.warn(
                    "instance {instance}: the database is unreachable ({reason}); projects not renewed stop "
                    "before their lease runs out",
                    instance=self.o.instance_id, reason=f.getErrorMessage(),
                )
        else:
            log.failure("instance {instance}: lease turn failed", f, instance=self.o.instance_id)
        self.healthy = False
        self.turns += 1

    async def _turn_once(self) -> None:
        o = self.o
        store = o.store
        sent = self.clock.seconds()
        view = await store.lease_tick(o.instance_id, getattr(o, "url", None), o.settings.advertise_host, self.ttl)
        if not self.healthy and self.turns:
            log.info("instance {instance}: the database is back", instance=o.instance_id)
        self.healthy = True
        self.turns += 1
        until = sent + self.ttl - self.margin
        for project_id in view.renewed:
            self.valid_until[project_id] = until
        by_id = {row.id: row for row in view.projects}

        # Projects served here whose lease was not renewed: taken, or being deleted.
        for project_id in list(o.runtimes):
            if project_id not in view.renewed and project_id not in o.starting:
                if self._taken.get(project_id, float("-inf")) >= sent:
                    continue
                row = by_id.get(project_id)
                why = "being deleted" if row is not None and row.state == "deleting" else "its lease was not renewed"
                await o.unserve(project_id, why)

        # Deletions: ours (no longer renewed), and those no live instance holds.
        for row in view.projects:
            if row.state != "deleting":
                continue
            held = row.owner is not None and row.lease_until is not None and row.lease_until >= view.now
            if (row.owner == o.instance_id or not held) and row.id not in o.runtimes:
                await store.delete_project(row.id)
                self.valid_until.pop(row.id, None)
                log.info("project {id} deleted", id=row.id)

        # Leases held here without a runtime (a renewal that came back in
        # time after the safety stop): serve them again.
        for project_id in view.renewed:
            if project_id not in o.runtimes and project_id not in o.starting:
                await self._serve(project_id)

        # Claims.
        ready = [row for row in view.projects if row.state == "ready"]
        mine = sum(1 for row in ready if row.id in view.renewed)
        share = math.ceil(len(ready) / max(view.live, 1))
        free = [
            row.id for row in ready
            if (row.owner is None or row.lease_until is None or row.lease_until < view.now)
            and row.id not in o.runtimes and row.id not in o.starting and not self._backing_off(row.id)
        ]
        for project_id in list(self._backoff):
            self._backoff[project_id] -= 1
            if self._backoff[project_id] <= 0:
                del self._backoff[project_id]
        if free and mine < share:
            random.shuffle(free)
            won: List[str] = []
            # Instances claiming at once (a crashed one's projects) may win
            # fewer than they asked for: ask again for others, a few times.
            for _ in range(CLAIM_ROUNDS):
                wanted, free = free[: share - mine], free[share - mine:]
                if not wanted:
                    break
                sent = self.clock.seconds()
                got = await store.claim(o.instance_id, wanted, self.ttl)
                for project_id in got:
                    self.valid_until[project_id] = sent + self.ttl - self.margin
                won += sorted(got)
                mine += len(got)
                if len(got) == len(wanted) or mine >= share:
                    break
            for project_id in won:
                if self.running:
                    await self._serve(project_id)
        self._arm()
        # Another instance's lease that runs out before the next tick (its
        # owner has not renewed it for longer than the lease time less a
        # tick: it died, or lost the database): a turn then, not up to a
        # tick later (the fair share is reckoned again then, without it).
        due = [
            row.lease_until - view.now for row in ready
            if row.owner not in (None, o.instance_id) and row.lease_until is not None
            and row.lease_until >= view.now and row.id not in o.runtimes
        ]
        if due and min(due) < self.tick:
            self._wake_in(min(due) + WAKE_AFTER)

    def _wake_in(self, delay: float) -> None:
        if self._wake is not None and self._wake.active():
            if self._wake.getTime() <= self.clock.seconds() + delay:
                return
            self._wake.cancel()
        self._wake = self.clock.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._wake = None
        if self.running and self._turn is None:
            self._run_turn()

    def _backing_off(self, project_id: str) -> bool:
        return project_id in self._backoff

    async def _serve(self, project_id: str) -> None:
        o = self.o
        try:
            await o.serve_by_id(project_id)
        except (OckamError, OSError) as e:
            log.warn("instance {instance}: cannot serve project {id}: {reason}", instance=o.instance_id,
                     id=project_id, reason=str(e))
            self._backoff[project_id] = START_BACKOFF_TICKS
            self.valid_until.pop(project_id, None)
            try:
                await o.store.release(o.instance_id, [project_id])
            except StoreError:
                pass

    def held(self, project_id: str, sent: Optional[float] = None) -> None:
        """
        A lease on C{project_id} was taken at local time C{sent} (now by
        default) outside a turn (a project made here).
        """
        sent = self.clock.seconds() if sent is None else sent
        self.valid_until[project_id] = sent + self.ttl - self.margin
        self._taken[project_id] = sent
        self._arm()

    def may_serve(self, project_id: str) -> bool:
        """
        Whether this instance's lease on C{project_id} is still good (by
        the local deadline).
        """
        until = self.valid_until.get(project_id)
        return until is not None and until > self.clock.seconds()

    def forget(self, project_id: str) -> None:
        self.valid_until.pop(project_id, None)
        self._taken.pop(project_id, None)

    # --- the safety stop ------------------------------------------------------------------------

    def _disarm(self) -> None:
        if self._safety is not None and self._safety.active():
            self._safety.cancel()
        self._safety = None

    def _arm(self) -> None:
        """
        Wake up when the first served project's lease is due to run out.
        """
        self._disarm()
        if not self.running:
            return
        due = [self.valid_until[p] for p in self.o.runtimes if p in self.valid_until]
        due += [self.valid_until[p] for p in self.o.starting if p in self.valid_until]
        if not due:
            return
        delay = max(0.0, min(due) - self.clock.seconds())
        self._safety = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._safety = None
        now = self.clock.seconds()
        for project_id in list(self.o.runtimes):
            if self.valid_until.get(project_id, now) <= now:
                log.warn("instance {instance}: project {id} stops: its lease could not be renewed",
                         instance=self.o.instance_id, id=project_id)
                self.valid_until.pop(project_id, None)
                d = Deferred.fromCoroutine(self.o.unserve(project_id, "its lease could not be renewed"))
                d.addErrback(lambda f: log.failure("stopping a project failed", f))
        self._arm()
