"""
The client of the scenario ``orchestrator_scale`` (``python -m
benchmarks.probes orchestrator_scale``): one process with one ockamtw node, acting for the
administrator of a self-hosted Orchestrator, in phases the suite steps
through (it reads the Orchestrator's RSS and CPU between them):

1. enroll (the project ``default`` is made), then create projects until
   there are ``--projects`` (over the HTTP API, as ``ockam project
   create``); prints ``{"phase": "projects", ...}`` and waits for a line on
   stdin;
2. reach every project as a member does (a credential from its authority,
   a secure channel to its project node pinned to its identity, the
   credential presented), ``--concurrency`` at a time; prints
   ``{"phase": "channels", ...}`` and waits;
3. register ``--relays`` relays, spread evenly over the projects (their
   names ``PROJECT-r0``, ``PROJECT-r1``, ... at each), all at once; prints ``{"phase":
   "relays", ...}`` (registrations per second) and waits while they stay
   registered (each re-registers every ``--refresh`` seconds, 5 by default
   as Ockam 0.83's heartbeat);
4. on the next line: checks every relay is still up, stops, and prints the
   result.

The node's own cost is not measured: only what the Orchestrator does.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time

from twisted.internet import defer, task, threads


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _wait_for_go() -> str:
    return await threads.deferToThread(sys.stdin.readline)


async def _bounded(reactor, coroutines, concurrency: int) -> list:
    """
    Call the functions of C{coroutines} (each gives a Deferred or a
    coroutine) at most C{concurrency} at a time; their results, in order.
    """
    sem = defer.DeferredSemaphore(concurrency)

    def call(f):
        result = f()
        return defer.Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result

    ds = [sem.run(call, f) for f in coroutines]
    return await defer.gatherResults(ds, consumeErrors=True)


async def main(reactor, args) -> dict:
    from ockamtw import Node
    from ockamtw.orchestrator.client import OrchestratorClient, http_client
    from ockamtw.project.projectinfo import ProjectInfo
    from ockamtw.secure.identity import LocalIdentity

    with open(os.path.join(args.data, "admin.token")) as f:
        token = f.read().strip()
    http, pool = http_client(reactor)
    api = OrchestratorClient(http, args.url, token, clock=reactor, timeout=60)
    admin = LocalIdentity.create()
    node = Node(reactor, name=f"bench-admin-{args.tag}", identity=admin)
    node.membership.timeout = 60.0
    node.startService()
    try:
        enrolled = await api.enroll(admin)
        space = enrolled["space"]["id"]
        t0 = time.perf_counter()
        created = 1
        while created < args.projects:
            await api.project_create(space, f"p{created}")
            created += 1
        projects_seconds = time.perf_counter() - t0
        infos = []
        for project in await api.projects():
            infos.append(ProjectInfo.from_json(json.dumps(await api.project_information(project["id"]))))
        for info in infos:
            node.add_project(info)
        _emit({"phase": "projects", "projects": len(infos), "seconds": round(projects_seconds, 3),
               "per_second": round((created - 1) / projects_seconds, 2) if created > 1 else None})
        await _wait_for_go()

        t0 = time.perf_counter()
        await _bounded(reactor, [lambda i=i: node.resolve(f"/project/{i.name}") for i in infos], args.concurrency)
        channels_seconds = time.perf_counter() - t0
        _emit({"phase": "channels", "channels": len(infos), "seconds": round(channels_seconds, 3),
               "per_second": round(len(infos) / channels_seconds, 2)})
        await _wait_for_go()

        names = [(infos[i % len(infos)].name, f"r{i // len(infos)}") for i in range(args.relays)]
        t0 = time.perf_counter()
        relays = await _bounded(
            reactor,
            [lambda p=p, n=n: node.create_relay(f"/project/{p}", name=f"{p}-{n}", refresh=args.refresh, timeout=60)
             for p, n in names],
            args.relays,
        )
        relays_seconds = time.perf_counter() - t0
        _emit({"phase": "relays", "relays": len(relays), "seconds": round(relays_seconds, 3),
               "per_second": round(len(relays) / relays_seconds, 1)})
        await _wait_for_go()
        up = sum(1 for r in relays if str(r.status).upper() == "UP")
        return {"phase": "done", "relays_up": up, "relays": len(relays)}
    finally:
        await node.stopService()
        await pool.closeCachedConnections()


def run(args) -> dict:
    result = {}

    def go(reactor):
        async def body():
            result.update(await main(reactor, args))

        return defer.Deferred.fromCoroutine(body())

    try:
        task.react(go)
    except SystemExit as e:
        if e.code:
            raise
    return result
