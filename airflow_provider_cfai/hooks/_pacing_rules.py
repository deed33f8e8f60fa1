"""How many requests may go out now, for one token, wherever its users run: the rule and its proof.

Plain functions and data, no I/O. The gate (:mod:`._pacing_gate`) keeps one :class:`WindowState`
per token in a store (this process's memory, a file shared by every process of a host, or Redis
shared by every host) and applies these functions to it under that store's lock; it decides
nothing itself.

The rule. A gate takes *slots* from the state before sending, in *leases* of k slots (one per
waiting request when the limit is near; up to LEASE_MAX while at least half the quota is free). A
slot is *held* from the moment it is granted until its holder settles it; a settled slot that was
used is *spent* until ``period`` seconds after its request's answer (or failure) was seen. Unused
slots go back unspent. A lease of k slots is granted only if::

    held + spent + k  <=  quota = limit // sharers                                        (G)

where ``limit`` is the server's requests per window (``Ratelimit-Policy: q``; without that header,
the highest ``r`` + 1 seen, which can only be lower), ``period`` the window's length
(``Ratelimit-Policy: w``; without it Cloudflare's documented 300 s), and ``sharers`` the number of
separate states that may spend the token at once (connection extra ``rate_limit_sharers``: hosts
with their own temp dir; 1 with Redis, where every host shares one state).

Claims. A holder's slots are a *claim* with an expiry: every trip of its gate to the state (a grant,
a settlement, a renewal) sets it to ``now + claim``, where ``claim`` = the request timeout +
:data:`CLAIM_MARGIN`. A gate renews its claim while a request of its is in flight, and uses a leased
slot only within :data:`CLAIM_MARGIN` seconds of its last trip. A claim that lapses — its holder
vanished without a word: killed, evicted, its host gone — is *reaped* by the next trip of anyone:
its held slots become spent as of the lapse. A holder seen dead sooner (its pid, on the same host)
is reaped at once, its slots spent as of the moment its claim would have lapsed. No one needs to
see another host's pid: the expiry says it is gone.

Why no window is ever overrun. Premises: (P1) a request the server counts gets an answer with a
``Ratelimit`` header, as Cloudflare documents; an answer without one comes from a server that
enforces no limit. (P2) A request is counted, if at all, after its slot was granted, before its
sender sees the answer or gives up on it, and within the request timeout after its sender handed it
to the transport (a server counts a request when it arrives; the timeout bounds how long a request
is on its way, and no sender waits longer). (P3) The clocks of the state and of the server run at
the same rate; their offset does not matter, and a gate moves the times it measured onto the
state's clock by an offset that can only make them later. (P4) ``period`` is at least the server's
window and ``limit`` at most its limit (both hold by construction above), and the limit is at least
``sharers`` (an error when the server's own limit says otherwise; an estimate below it is raised to
one slot per sharer).

Lemma: a slot that is reaped was counted, if at all, before the time it is recorded as spent. A
request on a slot was handed to the transport at s <= R + CLAIM_MARGIN, R being the time its
holder's claim was last renewed before s; so it was counted by s + timeout <= R + claim (P2), and
the claim lapses no sooner than that. A reaped slot is recorded as spent as of its claim's lapse.

Claim: one state's slots are counted at most ``quota`` times in any interval I = [a, a + W) of the
server's clock, W being the window. Suppose more were, and let g be the latest time a lease was
granted among those slots (grants are serialised by the state's lock: flock, or WATCH/MULTI in
Redis). Each slot y granted before g was counted at some c >= a (in I), so its recorded answer (or
reaping) time e satisfies e >= c >= a (P2, the lemma); and the slot granted at g was counted after g
inside I, so g < a + W. Hence e > g - W >= g - period (P4): at g, y was still held, or spent and not
yet forgotten, and (G) counted it (merging kept answer times to bound the state's size only ever
moves them later). So (G) saw held + spent + k >= (slots counted in I) > quota at g, and would have
refused that lease. Then ``sharers`` states together are counted at most
sharers * (limit // sharers) <= limit times in any W-long interval, whatever the placement of the
server's windows. Every case follows:

- Answers that cross a window boundary. A slot stays counted until ``period`` after its answer, so
  it counts against every window its request could have landed in, early or late.
- A slow request that lives. Its holder renews the claim, so the slot stays held, counted by (G),
  for as long as the request runs; if a renewal fails and the claim lapses anyway, the lemma holds
  and its answer, when it comes, counts the slot once more (counting twice is safe).
- The rounding of ``t``. The guarantee never reads ``t`` (the time to the reset, rounded up to whole
  seconds). Only the brake below does, and a brake can only delay requests.
- Blind requests. Until the first answer says what the limit is, a state grants one slot at a time
  and only when none is held: a host's first request goes out alone, its answer fixes ``limit``, and
  from then on that request is a held or spent slot like any other. The others wait for that answer
  only as long as the first request's claim lives; if its holder vanished, the claim lapses and one
  of them goes, alone. Blind requests that fail without an answer stay spent; the claim needs fewer
  than ``quota`` of them in a row, which the retry limits give by a wide margin (Cloudflare:
  quota = 1200 // sharers).
- The brake. Every answer to a request granted in the current epoch lowers ``reset_at`` to the
  earliest ``now + t`` seen (``t`` rounds up, so this is never before the real reset), and an answer
  with ``r = 0`` closes the state until then. It protects against what the claim cannot see (another
  program using the token, ``rate_limit_sharers`` set too low) and can only delay.

Cost: a state spends its quota at the server's pace. When every state is busy, each gets one share
of the window; an idle state's share is not lent to others (that would need the stale views the
claim avoids). With Redis there is one state, one share of size ``limit``. A holder that vanished
costs the others its slots until its claim lapses and one window more: with a request timeout of
10 s and a window of 2 s, at most 10 + 2 + 2 = 14 s.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from airflow_provider_cfai.exceptions import CloudflareConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CLAIM_MARGIN",
    "DEFAULT_PERIOD",
    "LEASE_MAX",
    "Answer",
    "PacingDecision",
    "WindowState",
    "claim_for",
    "pace",
    "parse_ratelimit",
    "parse_ratelimit_policy",
    "reap",
    "record_answer",
    "renew",
    "settle",
]

#: Window length assumed until the server's ``Ratelimit-Policy`` gives one (Cloudflare: 5 minutes).
DEFAULT_PERIOD = 300.0
#: Most slots one lease takes beyond demand, and only while at least half the quota is free.
LEASE_MAX = 64
#: Seconds a claim outlives the request timeout; also the longest a leased slot waits to be used.
CLAIM_MARGIN = 2.0
_SPENT_ENTRIES = 128  # at most this many answer times are kept; closer ones merge beyond that

_REMAINING = re.compile(r"(?:^|;)\s*r\s*=\s*(\d+)")
_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)")
_QUOTA = re.compile(r"(?:^|;)\s*q\s*=\s*(\d+)")
_WINDOW = re.compile(r"(?:^|;)\s*w\s*=\s*(\d+(?:\.\d+)?)")


def claim_for(request_timeout: float) -> float:
    """How long a claim lives without renewal: the longest a request takes to be counted, plus the margin."""
    return request_timeout + CLAIM_MARGIN


def parse_ratelimit(value: str | None) -> tuple[int, float] | None:
    """Parse ``"default";r=<remaining>;t=<seconds to reset>`` into ``(remaining, seconds)``."""
    if not value:
        return None
    remaining, reset = _REMAINING.search(value), _RESET.search(value)
    if remaining is None or reset is None:
        return None
    return int(remaining.group(1)), float(reset.group(1))


def parse_ratelimit_policy(value: str | None) -> tuple[int, float] | None:
    """Parse ``"default";q=<requests>;w=<seconds>`` into ``(limit, period)``; ``None`` if unusable."""
    if not value:
        return None
    first = value.split(",", 1)[0]
    quota, window = _QUOTA.search(first), _WINDOW.search(first)
    if quota is None or window is None:
        return None
    limit, period = int(quota.group(1)), float(window.group(1))
    return (limit, period) if limit >= 1 and period > 0 else None


@dataclasses.dataclass
class WindowState:
    """One token's pacing state: what the server said, and the slots every holder claimed.

    Plain data (``to_dict`` / ``from_dict`` give JSON), so a file or Redis can hold it. Times are on
    the clock of whatever holds the state.
    """

    limit: int | None = None  #: requests per window; ``None`` until an answer says
    exact: bool = False  #: ``limit`` is the server's own (Ratelimit-Policy), not a lower estimate
    period: float | None = None  #: the window in seconds; ``None``: :data:`DEFAULT_PERIOD`
    unmetered: bool = False  #: the server answered without a Ratelimit header: it enforces no limit
    held: dict[str, list[float]] = dataclasses.field(default_factory=dict)  #: holder -> [slots, claim expires]
    spent: list[list[float]] = dataclasses.field(default_factory=list)  #: [answer time, slots], by time
    epoch: int = 0  #: advanced at every reset of the brake; answers from older epochs do not touch it
    reset_at: float | None = None  #: earliest reset announced in this epoch
    closed: bool = False  #: an answer in this epoch said r=0: nothing goes out before ``reset_at``

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "exact": self.exact,
            "period": self.period,
            "unmetered": self.unmetered,
            "held": {holder: list(entry) for holder, entry in self.held.items()},
            "spent": [list(entry) for entry in self.spent],
            "epoch": self.epoch,
            "reset_at": self.reset_at,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> WindowState:
        """Rebuild a state from :meth:`to_dict`; :class:`ValueError` if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a window state is a JSON object")
        try:
            state = cls(
                limit=None if data.get("limit") is None else int(data["limit"]),
                exact=bool(data.get("exact", False)),
                period=None if data.get("period") is None else float(data["period"]),
                unmetered=bool(data.get("unmetered", False)),
                held={str(k): [int(v[0]), float(v[1])] for k, v in dict(data.get("held", {})).items()},
                spent=[[float(until), int(n)] for until, n in data.get("spent", [])],
                epoch=int(data.get("epoch", 0)),
                reset_at=None if data.get("reset_at") is None else float(data["reset_at"]),
                closed=bool(data.get("closed", False)),
            )
        except (TypeError, ValueError, IndexError) as error:
            raise ValueError(f"not a window state: {error}") from None
        return state

    @property
    def window(self) -> float:
        return self.period or DEFAULT_PERIOD

    def slots_held(self) -> int:
        return int(sum(entry[0] for entry in self.held.values()))

    def slots_spent(self, now: float) -> int:
        """Used slots whose answers came less than a window ago."""
        since = now - self.window
        return int(sum(n for until, n in self.spent if until > since))

    def last_lapse(self) -> float | None:
        """When the last claim held lapses unless renewed; ``None`` when nothing is held."""
        return max((entry[1] for entry in self.held.values()), default=None)


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one answer (or failure) told a gate.

    :param epoch: the state's epoch when the request's slot was granted.
    :param ratelimit: the ``Ratelimit`` header as ``(r, t)``; ``None`` if absent.
    :param policy: the ``Ratelimit-Policy`` header as ``(limit, period)``; ``None`` if absent.
    :param responded: ``False`` when no response arrived at all (the request may still have counted).
    :param answered_at: when the answer was seen, on the state's clock (never earlier than it was).
    """

    epoch: int
    ratelimit: tuple[int, float] | None = None
    policy: tuple[int, float] | None = None
    responded: bool = True
    answered_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class PacingDecision:
    """``slots`` granted (``send``); otherwise wait at most ``wait`` seconds and ask again.

    ``for_answer``: slots are held, and their answers (or their claims' lapse) may change the
    picture sooner.
    """

    slots: int = 0
    wait: float = 0.0
    for_answer: bool = False
    epoch: int = 0

    @property
    def send(self) -> bool:
        return self.slots > 0


def _forget(state: WindowState, now: float) -> None:
    since = now - state.window
    if state.spent and state.spent[0][0] <= since:
        state.spent = [entry for entry in state.spent if entry[0] > since]
    if state.reset_at is not None and now >= state.reset_at:
        state.epoch += 1
        state.reset_at, state.closed = None, False


def _spend(state: WindowState, spent: list[tuple[float, int]]) -> None:
    """Record used slots as ``(time their answers came by, how many)``."""
    if not spent:
        return
    state.spent.extend([until, n] for until, n in spent if n > 0)
    state.spent.sort()
    merged: list[list[float]] = []
    for entry in state.spent:
        if merged and merged[-1][0] == entry[0]:
            merged[-1][1] += entry[1]
        else:
            merged.append(entry)
    if len(merged) > _SPENT_ENTRIES:
        # Bound the state's size: entries closer than ``width`` merge into the latest of them, so
        # a slot may count a little longer than it must, never shorter.
        width = (merged[-1][0] - merged[0][0]) / (_SPENT_ENTRIES // 2)
        compact: list[list[float]] = []
        start = merged[0][0]
        for until, n in merged:
            if compact and until - start <= width:
                compact[-1][0], compact[-1][1] = until, compact[-1][1] + n
            else:
                compact.append([until, n])
                start = until
        merged = compact
    state.spent = merged


def reap(state: WindowState, now: float, alive: Callable[[str], bool | None]) -> int:
    """Settle the slots of holders that are gone, as used: those whose claim lapsed, unless ``alive``
    says their process still runs, and those ``alive`` says are dead. Returns how many holders.

    A slot is spent as of its claim's lapse: its request was counted by then (the lemma in the
    module's docstring), even if its holder's death was seen sooner, and however late the reaping.
    """
    reaped = 0
    for holder, (slots, lapses) in list(state.held.items()):
        verdict = alive(holder)
        if verdict is False or (verdict is None and now >= lapses):
            del state.held[holder]
            _spend(state, [(lapses, int(slots))])
            reaped += 1
    return reaped


def renew(state: WindowState, now: float, *, holder: str, claim: float) -> None:
    """Push ``holder``'s claim to ``now + claim`` (a holder that holds nothing has no claim)."""
    entry = state.held.get(holder)
    if entry is not None:
        entry[1] = now + claim


def record_answer(state: WindowState, answer: Answer) -> None:
    """Learn the limit, the window and the brake from one answer."""
    if answer.ratelimit is None:
        if answer.responded and state.limit is None:
            state.unmetered = True  # (P1): a server that counts says so on every answer
        return
    remaining, seconds = answer.ratelimit
    state.unmetered = False
    if answer.policy is not None:
        (state.limit, state.period), state.exact = answer.policy, True
    elif not state.exact:
        state.limit = max(state.limit or 0, remaining + 1)  # r = limit - counted, so r + 1 <= limit
    if answer.epoch != state.epoch:
        return  # granted before the brake's last reset: it may describe an earlier window
    reset_at = answer.answered_at + seconds
    state.reset_at = reset_at if state.reset_at is None else min(state.reset_at, reset_at)
    if remaining <= 0:
        state.closed = True


def settle(state: WindowState, *, holder: str, answered: list[float], unused: int) -> None:
    """Give back slots: used ones with the time each answer (or failure) came, and ``unused`` ones."""
    entry = state.held.get(holder)
    if entry is not None:
        entry[0] = max(0, int(entry[0]) - len(answered) - unused)
        if not entry[0]:
            del state.held[holder]
    _spend(state, [(until, 1) for until in answered])  # also if the holder was reaped: counting twice is safe


def _until_a_claim_lapses(state: WindowState, now: float) -> float:
    return max(0.0, min(entry[1] for entry in state.held.values()) - now)


def pace(
    state: WindowState, now: float, *, holder: str, claim: float, want: int = 1, sharers: int = 1
) -> PacingDecision:
    """Grant ``holder`` up to ``want`` slots (more, as a lease, when the limit is far), claimed for
    ``claim`` seconds, or say how long to wait. Call :func:`reap` first."""
    _forget(state, now)
    if state.closed and state.reset_at is not None:
        return PacingDecision(wait=max(0.0, state.reset_at - now), epoch=state.epoch)
    held = state.slots_held()
    if state.limit is None:
        if state.unmetered:
            grant = max(want, LEASE_MAX)
        elif held:
            # The first request's answer will say what the limit is; if its holder vanished, its
            # claim lapses and the next caller goes alone.
            return PacingDecision(wait=_until_a_claim_lapses(state, now), for_answer=True, epoch=state.epoch)
        else:
            grant = 1  # blind: alone, until an answer says what the limit is
    else:
        quota = state.limit // sharers
        if quota < 1 and not state.exact:
            quota = 1  # an estimate from a busy window; the true limit is at least ``sharers``
        elif quota < 1:
            raise CloudflareConfigError(
                f"Connection extra 'rate_limit_sharers' is {sharers}, more than the token's limit of "
                f"{state.limit} requests per {state.window:g} s, so no sharer could send anything; "
                "lower it, or share one budget through Redis (extra 'redis_url' or 'redis_conn_id')."
            )
        free = quota - held - state.slots_spent(now)
        if free <= 0:
            if not state.spent:
                wait = min(state.window, _until_a_claim_lapses(state, now))
                return PacingDecision(wait=wait, for_answer=True, epoch=state.epoch)
            # Settling a held slot frees nothing before it is a window old: sleep to the first expiry.
            first = state.spent[0][0] + state.window
            return PacingDecision(wait=max(0.0, first - now), epoch=state.epoch)
        lease = min(LEASE_MAX, quota // LEASE_MAX) if 2 * free >= quota else 0
        grant = min(free, max(want, lease))
    entry = state.held.setdefault(holder, [0, now + claim])
    entry[0], entry[1] = int(entry[0]) + grant, now + claim
    return PacingDecision(slots=grant, epoch=state.epoch)
