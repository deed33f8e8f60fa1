"""The pacing rule against a simulated Cloudflare, on a fake clock, over many random interleavings.

Hosts each keep one state (a file in production, memory here) shared by their processes; each
process has one gate and a few concurrent clients. The simulated server counts requests the way the
emulator does (a window starts at the first request after the last one ended) and answers with
``Ratelimit`` and ``Ratelimit-Policy``. Latencies are random and sometimes longer than the window,
so answers cross window boundaries; answers get lost after the request was counted; processes crash
holding slots, on any host. A crashed process's request may still arrive and be counted after its
death (within the request timeout, premise P2). Where the state is shared by hosts (Redis), or a
host cannot check pids, no one sees a crash: the dead holder's claim lapses. Living processes renew
their claims while a request is in flight. The assertion is the claim proved in
``hooks/_pacing_rules.py``: no interval as long as the window ever sees more than the limit — hence
no 429 and no lockout — and every surviving process's requests go out.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Callable

import pytest

from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate, Ticket
from airflow_provider_cfai.hooks._pacing_store import MemoryStore


class Server:
    """Counts requests per window (the emulator's rule) and remembers when each was counted."""

    def __init__(self, limit: int, window: float, *, send_policy: bool) -> None:
        self.limit, self.window, self.send_policy = limit, window, send_policy
        self.start: float | None = None
        self.count = 0
        self.counted: list[float] = []
        self.refused = 0

    def receive(self, now: float) -> dict[str, str]:
        if self.start is None or now >= self.start + self.window:
            self.start, self.count = now, 0
        self.count += 1
        self.counted.append(now)
        if self.count > self.limit:
            self.refused += 1
        remaining = max(0, self.limit - self.count)
        reset = max(1, math.ceil(self.start + self.window - now - 1e-9))  # whole seconds, rounded up
        headers = {"Ratelimit": f'"default";r={remaining};t={reset}'}
        if self.send_policy:
            headers["Ratelimit-Policy"] = f'"default";q={self.limit};w={self.window:g}'
        return headers

    def busiest_window(self) -> int:
        """The most requests counted in any interval ``[a, a + window)``."""
        times = sorted(self.counted)
        return max((bisect.bisect_left(times, t + self.window) - i for i, t in enumerate(times)), default=0)


class Simulation:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + max(0.0, delay), next(self._order), action))

    def run(self, done: Callable[[], bool], *, max_events: int = 200_000) -> None:
        for _ in range(max_events):
            if not self._queue or done():
                return
            self.now, _, action = heapq.heappop(self._queue)
            action()
        raise AssertionError(f"still running after {max_events} events at t={self.now:.1f} s")

    def clock(self) -> float:
        return self.now


@dataclasses.dataclass
class Process:
    gate: RateLimitGate
    owed: int = 0  # requests its clients have not sent yet
    alive: bool = True


@dataclasses.dataclass
class Scenario:
    seed: int
    limit: int
    window: float
    hosts: int
    processes: int  # per host
    clients: int  # per process
    requests: int  # per client
    sharers: int
    shared_state: bool  # one state for every host, as with Redis
    send_policy: bool
    crash_rate: float
    loss_rate: float
    pid_checks: bool = True  # a host's store can tell its dead processes (not across hosts)


def run(scenario: Scenario) -> tuple[Server, int, int]:
    """Play one scenario; returns the server, the requests sent, and those surviving processes never sent."""
    sim = Simulation(scenario.seed)
    rng = sim.rng
    server = Server(scenario.limit, scenario.window, send_policy=scenario.send_policy)
    processes: list[Process] = []

    def alive(holder: str) -> bool | None:
        if scenario.shared_state or not scenario.pid_checks:
            return None  # another host's holder, or no pids to check: only its claim's lapse tells
        return next((p.alive for p in processes if p.gate.holder == holder), None)

    shared = MemoryStore(sim.clock, alive)
    stores = [shared if scenario.shared_state else MemoryStore(sim.clock, alive) for _ in range(scenario.hosts)]
    sent = 0

    timeout = 1.5 * scenario.window  # no request is on its way longer (P2)

    def latency() -> float:
        # Mostly quick; sometimes slower than the window itself, so answers land in a later window.
        return min(rng.expovariate(20), timeout) if rng.random() < 0.8 else rng.uniform(0, timeout)

    def client(process: Process, left: int) -> None:
        if not process.alive or left == 0:
            return
        got = process.gate.try_acquire()
        if not isinstance(got, Ticket):
            sim.at(got + rng.uniform(0, 0.01), lambda: client(process, left))
            return
        go(process, got, left)

    def go(process: Process, ticket: Ticket, left: int) -> None:
        nonlocal sent
        sent += 1
        process.owed -= 1
        lost = rng.random() < scenario.loss_rate

        def arrive() -> None:
            headers = server.receive(sim.now)  # counted even if its sender died on the way (P2)
            if not process.alive:
                return
            if process is not processes[0] and rng.random() < scenario.crash_rate / 4:
                process.alive = False  # dies after its request was counted, before the answer came
                return
            sim.at(latency(), lambda: answer(None if lost else headers))

        def answer(headers: dict[str, str] | None) -> None:
            if not process.alive:
                return
            process.gate.release(ticket, headers)
            sim.at(rng.expovariate(50), lambda: client(process, left - 1))

        sim.at(latency(), arrive)

    def keep_claim(process: Process) -> None:
        """What the gate's timer does: renew the claim while a request is in flight."""
        if not process.alive or (process.owed == 0 and not process.gate._in_flight):
            return
        if process.gate._in_flight:
            process.gate.renew()
        sim.at(process.gate.claim / 3, lambda: keep_claim(process))

    for host in range(scenario.hosts):
        for _ in range(scenario.processes):
            gate = RateLimitGate(
                stores[host],
                sharers=scenario.sharers,
                clock=sim.clock,
                poll=rng.choice((0.01, 0.05, 0.2)),
                request_timeout=timeout,
            )
            process = Process(gate)
            processes.append(process)
            sim.at(gate.claim / 3, lambda p=process: keep_claim(p))
            for _ in range(scenario.clients):
                process.owed += scenario.requests
                sim.at(rng.uniform(0, scenario.window), lambda p=process: client(p, scenario.requests))

    crashable = processes[1:]  # one process always survives, so the run must finish
    for process in crashable:
        if rng.random() < scenario.crash_rate:

            def crash(p: Process = process) -> None:
                p.alive = False

            sim.at(rng.uniform(0, 4 * scenario.window), crash)
    sim.run(lambda: all(p.owed == 0 for p in processes if p.alive))
    return server, sent, sum(p.owed for p in processes if p.alive)


def scenarios(count: int, *, seed: int) -> list[Scenario]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        hosts = rng.randint(1, 4)
        shared_state = rng.random() < 0.3
        sharers = 1 if shared_state else hosts
        out.append(
            Scenario(
                seed=seed * 1000 + i,
                limit=rng.randint(sharers, 24),
                window=rng.choice((0.5, 1.0, 2.0, 3.7)),
                hosts=hosts,
                processes=rng.randint(1, 3),
                clients=rng.randint(1, 4),
                requests=rng.randint(3, 12),
                sharers=sharers,
                shared_state=shared_state,
                send_policy=rng.random() < 0.85,
                crash_rate=rng.choice((0.0, 0.0, 0.3)),
                loss_rate=rng.choice((0.0, 0.05)),
                pid_checks=rng.random() < 0.5,
            )
        )
    return out


@pytest.mark.parametrize("batch", range(4), ids=lambda b: f"batch{b}")
def test_no_interval_as_long_as_the_window_ever_sees_more_than_the_limit(batch: int) -> None:
    for scenario in scenarios(60, seed=batch + 1):
        server, _, owed = run(scenario)
        busiest = server.busiest_window()
        assert busiest <= scenario.limit, f"{busiest} requests in one window, limit {scenario.limit}: {scenario}"
        assert server.refused == 0, scenario
        assert owed == 0, f"surviving processes never sent {owed} requests: {scenario}"


def test_every_request_goes_out_when_no_process_crashes() -> None:
    for scenario in scenarios(40, seed=99):
        scenario = dataclasses.replace(scenario, crash_rate=0.0)
        server, sent, owed = run(scenario)
        expected = scenario.hosts * scenario.processes * scenario.clients * scenario.requests
        assert (sent, owed) == (expected, 0), scenario
        assert server.busiest_window() <= scenario.limit, scenario


def test_the_simulation_catches_hosts_that_do_not_split_the_limit() -> None:
    """Negative control: three hosts that each believe they own the token overrun it."""
    overruns = 0
    for scenario in scenarios(30, seed=7):
        scenario = dataclasses.replace(
            scenario, hosts=3, shared_state=False, sharers=1, limit=6, requests=12, clients=3, crash_rate=0.0
        )
        server, _, _ = run(scenario)
        overruns += server.busiest_window() > scenario.limit
    assert overruns > 0
