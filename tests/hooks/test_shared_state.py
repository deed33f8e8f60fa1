"""The host-wide state file: shared by processes under flock, reaping the dead, holding no secret."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cfai.hooks import _host
from airflow_provider_cfai.hooks._pacing_file import FileStore, host_store
from airflow_provider_cfai.hooks._pacing_gate import RateLimitGate, Ticket
from airflow_provider_cfai.hooks._pacing_store import MemoryStore

POLICY = {"Ratelimit": '"default";r=9;t=60', "Ratelimit-Policy": '"default";q=10;w=60'}


def stored(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_bytes())["state"]
    return state


def test_gates_on_separate_opens_of_one_file_share_the_state(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    first, second = RateLimitGate(FileStore(path)), RateLimitGate(FileStore(path))  # as two processes would

    ticket = first.try_acquire()
    assert isinstance(ticket, Ticket)
    assert not isinstance(second.try_acquire(), Ticket)  # the first request of the host goes alone

    first.release(ticket, POLICY)
    assert isinstance(second.try_acquire(), Ticket)
    assert stored(path)["limit"] == 10


def test_a_crashed_process_slots_are_reaped_and_stay_counted(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            gate = RateLimitGate(FileStore(path))
            gate.release(gate.acquire(), POLICY)
            gate.acquire()  # in flight when the process dies
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert sum(slots for slots, _ in stored(path)["held"].values()) == 1

    survivor = RateLimitGate(FileStore(path))
    assert isinstance(survivor.try_acquire(), Ticket)

    state = stored(path)
    assert not [holder for holder in state["held"] if f"|{pid}|" in holder]
    assert sum(n for _, n in state["spent"]) == 2  # the answered request and the orphan, both still counted


def test_a_forked_child_starts_with_no_lease_and_its_own_lock(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    gate = RateLimitGate(FileStore(path))
    gate.release(gate.acquire(), {"Ratelimit": '"default";r=1;t=60', "Ratelimit-Policy": '"default";q=10000;w=60'})
    gate.acquire()  # a lease of several slots
    parent_holder, parent_free = gate.holder, gate._free
    assert parent_free > 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ticket = gate.acquire()
            report = {"holder": gate.holder, "free": gate._free, "ok": ticket.gate is gate}
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    assert os.waitpid(pid, 0)[1] == 0
    child = json.loads(os.read(read, 4096))
    os.close(read)

    held = stored(path)["held"]
    assert child["holder"] != parent_holder
    assert child["ok"]
    assert held[child["holder"]][0] == child["free"] + 1  # a lease of its own, through its own descriptor
    assert held[parent_holder][0] == parent_free + 1  # the parent's lease is untouched


def test_a_state_file_deleted_under_a_process_is_recreated_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    old = RateLimitGate(FileStore(path))
    old.release(old.acquire(), POLICY)
    path.unlink()  # a temp-dir cleaner; `old` still has the deleted file open
    new = RateLimitGate(FileStore(path))
    ticket = new.try_acquire()  # blind again: a new file
    assert isinstance(ticket, Ticket)

    assert not isinstance(old.try_acquire(), Ticket)  # it sees the new file, where `new` went alone
    new.release(ticket, POLICY)
    assert isinstance(old.try_acquire(), Ticket)


def test_an_unreadable_state_file_starts_afresh_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token.json"
    path.write_text("{not json")

    with caplog.at_level(logging.WARNING):
        assert isinstance(RateLimitGate(FileStore(path)).try_acquire(), Ticket)

    assert "unreadable" in caplog.text
    assert stored(path)["held"]


def test_a_state_from_before_a_reboot_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    held = {"other-host|1|2|3": [10, 5.0]}
    path.write_text(json.dumps({"boot": "an-earlier-boot", "state": {"limit": 10, "held": held}}))

    assert isinstance(RateLimitGate(FileStore(path)).try_acquire(), Ticket)
    assert "other-host|1|2|3" not in stored(path)["held"]


def test_a_directory_other_users_can_write_to_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(_host.STATE_DIR_ENV, str(shared))

    with caplog.at_level(logging.WARNING):
        store = host_store("abc")

    assert isinstance(store, MemoryStore)
    assert "writable by other users" in caplog.text
    assert list(shared.iterdir()) == []


def test_the_state_file_is_private_and_holds_no_secret(make_hook: Any, emulator: Any) -> None:
    hook = make_hook()
    hook.list_finetunes()
    hook.list_finetunes()

    directory = Path(os.environ[_host.STATE_DIR_ENV])
    (path,) = directory.iterdir()
    text = path.read_text()
    assert emulator.token not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored(path)["limit"] == 1200  # the emulator's default, from Ratelimit-Policy
    assert path.name.startswith(hook.settings.credential_digest[:40])


def test_the_next_task_on_the_host_starts_from_what_the_last_one_learned(make_hook: Any, emulator: Any) -> None:
    from airflow_provider_cfai.hooks import _pacing

    emulator.configure(rate_limit=3, rate_window=60, rate_lockout=60)
    for _ in range(3):
        make_hook().list_finetunes()
        _pacing._GATES.clear()  # what a fresh task process sees: no gate in memory

    gate = _pacing.gate_for_settings(make_hook().settings)
    assert isinstance(gate, RateLimitGate)
    assert not isinstance(gate.try_acquire(), Ticket)  # the window is spent, and the file says so
    assert emulator.state()["rate_limited_responses"] == 0


def test_a_holder_whose_pid_now_belongs_to_another_process_is_dead() -> None:
    host, pid, started = _host.process_identity().split("|")
    assert started  # this platform has /proc: start times are compared

    assert _host.holder_alive(f"{host}|{pid}|{started}|1") is True
    assert _host.holder_alive(f"{host}|{pid}|{int(started) - 1}|1") is False  # the pid was reused since
    assert _host.holder_alive(f"another-host|{pid}|{started}|1") is None  # cannot be checked from here


def test_a_holder_whose_pid_was_reused_is_reaped_from_the_host_state(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    host, pid, started = _host.process_identity().split("|")
    reused = f"{host}|{pid}|{int(started) - 1}|1"  # a dead task whose pid this process now has
    held = {reused: [3, time.monotonic() + 3600]}  # its claim would not lapse for an hour
    state = {"limit": 4, "exact": True, "period": 60.0, "held": held}
    path.write_text(json.dumps({"boot": _host.boot_id(), "state": state}))

    assert isinstance(RateLimitGate(FileStore(path)).try_acquire(), Ticket)  # 3 of 4 were held by the dead one

    assert reused not in stored(path)["held"]


def test_a_zombie_holder_is_dead() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits at once and stays a zombie until waited for
        os._exit(0)
    try:
        while Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
            os.sched_yield()  # until the child has exited (its state is Z until reaped)
        assert _host.holder_alive(f"{_host.process_identity().split('|')[0]}|{pid}||1") is False
    finally:
        os.waitpid(pid, 0)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("a symlink", "is not a directory"),
        ("another user's", "belongs to another user"),
        ("group-writable", "writable by other users"),
    ],
)
def test_a_state_directory_that_is_not_private_is_refused(tmp_path: Path, problem: str, message: str) -> None:
    path = tmp_path / "state"
    if problem == "a symlink":  # to a directory someone else may later swap
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir(mode=0o700)
        if problem == "group-writable":
            path.chmod(0o770)
        else:
            if os.getuid() != 0:
                pytest.skip("only root can give a directory to another user")
            os.chown(path, 65534, 65534)

    with pytest.raises(OSError, match=message):
        _host.private_dir(path)
