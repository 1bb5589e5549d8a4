"""The scoreboard's typed reads and writes: what a worker writes is what the master, the
dispatcher and the proxy read, without any caller knowing the word layout."""

from __future__ import annotations

import time

from prefork_lb import scoreboard as sb


def test_allocate_reserves_an_entry_for_the_slot() -> None:
    board = sb.Scoreboard(4)
    i = board.allocate(0, slot=2)
    assert board.state(i) == sb.BOOTING
    assert board.get(i, sb.PID) == -1  # reserved until the fork returns
    board.set_pid(i, 4242)
    board.set_port(i, 9001)
    (e,) = board.entries_in_use()
    assert (e.entry, e.pid, e.slot, e.port, e.state) == (i, 4242, 2, 9001, sb.BOOTING)
    assert board.allocate(0, slot=0) != i


def test_worker_writes_are_read_back_typed() -> None:
    board = sb.Scoreboard(2)
    i = board.allocate(7, slot=0)
    entry = board.handle(i)
    entry.set_state(sb.READY)
    entry.connection_opened()
    assert board.busy(i), "a fresh connection counts as load before its first request"
    entry.first_request()
    entry.request_started("GET", b"/x")
    before = time.monotonic()
    assert board.in_flight(i) == 1 and board.busy(i)
    assert board.current_request(i) == "GET /x"
    assert board.request_start(i) <= before
    entry.received(3)
    e = board.entries_in_use()[0]
    assert (e.state, e.in_flight, e.fresh, e.conns, e.received) == (sb.READY, 1, 0, 1, 3)
    entry.request_finished()
    entry.connection_closed()
    assert not board.busy(i) and board.get(i, sb.SERVED) == 0  # counted; published at the beat
    entry.beat()
    assert board.get(i, sb.SERVED) == 1
    assert board.entries_in_use()[0].latency >= 0


def test_heartbeat_and_clear() -> None:
    board = sb.Scoreboard(2)
    i = board.allocate(7, slot=1)
    board.putf(i, sb.HEARTBEAT, 1.5)
    assert board.heartbeat(i) == 1.5
    board.handle(i).beat()
    assert board.heartbeat(i) >= time.monotonic() - 1
    board.clear(i)
    assert board.entries_in_use() == [] and board.state(i) == sb.EMPTY


def test_entries_in_use_skips_free_and_reserved_entries() -> None:
    board = sb.Scoreboard(3)
    board.allocate(0, slot=0)  # reserved (pid -1): not a process yet
    j = board.allocate(0, slot=1)
    board.set_pid(j, 11)
    assert [e.entry for e in board.entries_in_use()] == [j]


def test_snapshot_names_the_state() -> None:
    board = sb.Scoreboard(2)
    i = board.allocate(5, slot=0)
    board.put(i, sb.STATE, sb.DRAINING)
    assert board.snapshot(i)["state"] == "draining"


def test_ready_load_adds_up_a_slots_ready_workers() -> None:
    board = sb.Scoreboard(4)
    for pid in (11, 12):  # a reload: two ready workers in slot 0
        i = board.allocate(pid, slot=0)
        board.set_pid(i, pid)
        e = board.handle(i)
        e.set_state(sb.READY)
        e.connection_opened()
        e.received(2)
    booting = board.allocate(13, slot=1)
    board.set_pid(booting, 13)
    load = board.ready_load({0, 1}, time.monotonic())
    assert load == {0: (2, 4, 0, 2)}, "fresh connections count as load; a booting worker is not there"
    assert board.ready_load({1}, time.monotonic()) == {}


def test_shed_counts_in_word_32_and_queued_requests_count_as_load() -> None:
    board = sb.Scoreboard(2)
    i = board.allocate(7, slot=0)
    entry = board.handle(i)
    entry.shed()
    entry.shed(2)
    assert board.shed(i) == 3 and board.get(i, sb.COUNTERS) == 3
    entry.set_state(sb.READY)
    entry.request_started("GET", b"/a")
    entry.queued(1)
    assert board.ready_load({0}, time.monotonic())[0][0] == 2, "in the app, and one waiting"
    entry.queued(-1)
    assert board.ready_load({0}, time.monotonic())[0][0] == 1


def test_request_counters_are_published_at_the_heartbeat_and_leave_shed_alone() -> None:
    from prefork_lb import scoreboard as sb

    board = sb.Scoreboard(2)
    i = board.allocate(7, 0)
    e = board.handle(i)
    e.shed(3)  # written straight into the entry by the guard thread
    e.request_started("GET", b"/")
    e.request_finished("GET", 2)
    c = board.counters(i)
    assert c[sb.BY_STATUS - sb.COUNTERS + 2] == 0, "published before the heartbeat"
    e.beat()
    c = board.counters(i)
    assert c[sb.BY_STATUS - sb.COUNTERS + 2] == 1 and c[sb.BY_METHOD - sb.COUNTERS] == 1
    assert sum(c[sb.HISTOGRAM - sb.COUNTERS : sb.DEADLINES - sb.COUNTERS]) == 1
    assert c[0] == 3 and board.get(i, sb.SERVED) == 1


def test_published_counters_add_up_by_status_method_and_bucket() -> None:
    from prefork_lb import scoreboard as sb

    board = sb.Scoreboard(2)
    i = board.allocate(7, 0)
    e = board.handle(i)
    for method, status in (("GET", 2), ("GET", 2), ("POST", 5), ("BREW", 4), ("HEAD", 0)):
        e.request_started(method, b"/")
        e.request_finished(method, status)
    board.putf(i, sb.REQ_START, 0.0)  # a request that took since boot: the last bucket
    e.in_flight += 1
    e.request_finished("PUT", 3)
    e.beat()
    c = board.counters(i)

    def words(first: int, n: int) -> list[int]:
        return c[first - sb.COUNTERS : first - sb.COUNTERS + n]

    assert words(sb.BY_STATUS, 6) == [1, 0, 2, 1, 1, 1]  # none, 1xx..5xx
    assert dict(zip(sb.METHODS, words(sb.BY_METHOD, 8), strict=True)) == {
        "GET": 2,
        "HEAD": 1,
        "POST": 1,
        "PUT": 1,
        "DELETE": 0,
        "PATCH": 0,
        "OPTIONS": 0,
        "other": 1,
    }
    hist = words(sb.HISTOGRAM, len(sb.DURATION_BUCKETS) + 1)
    assert sum(hist) == 6 and hist[-1] == 1
    assert words(sb.DURATION_US, 1)[0] > 0 and board.get(i, sb.SERVED) == 6


def test_the_request_line_follows_each_request_even_when_it_repeats() -> None:
    board = sb.Scoreboard(2)
    i = board.allocate(7, 0)
    e = board.handle(i)
    path = b"/same"
    for _ in range(3):
        e.request_started("GET", path)  # the same objects again: the line is not rewritten
        e.request_finished("GET", 2)
    assert board.current_request(i) == "GET /same"
    e.request_started("POST", b"/other?q=1")
    assert board.current_request(i) == "POST /other?q=1" and board.in_flight(i) == 1
    e.request_finished("POST", 2)
    e.request_started("GET", path)
    assert board.current_request(i) == "GET /same" and e.served == 4


def test_the_dispatchers_read_takes_received_then_fresh_then_in_flight() -> None:
    """The order the workers' counts are read in (prefork_lb.worker.admit): a worker moves a
    connection into its next count before out of the last, so a read in this order may count
    it twice for an instant, never not at all."""
    board = sb.Scoreboard(2)
    i = board.allocate(7, 0)
    board.handle(i).set_state(sb.READY)
    words = {sb.RECEIVED: "received", sb.FRESH: "fresh", sb.IN_FLIGHT: "in flight"}
    read: list[str] = []

    class Recording:
        def __init__(self, q: memoryview) -> None:
            self.q = q

        def __getitem__(self, k: int) -> int:
            word = words.get(k - i * sb._WORDS)
            if word is not None:
                read.append(word)
            return int(self.q[k])

    board.q = Recording(board.q)  # type: ignore[assignment]
    board.ready_load({0}, 0.0)
    assert read[:3] == ["received", "fresh", "in flight"], read
