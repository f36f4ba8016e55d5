"""RWLock: readers share, a writer excludes, a waiting writer holds back new readers, timeouts say no."""

from __future__ import annotations

import threading

from conditioning.rwlock import RWLock


def test_readers_share_and_a_writer_excludes_them():
    lock = RWLock()
    assert lock.acquire_read(timeout=0) and lock.acquire_read(timeout=0)  # two readers at once
    assert not lock.idle
    lock.release_read()
    lock.release_read()
    assert lock.idle
    with lock.write():
        assert not lock.acquire_read(timeout=0.01)  # timed out while the writer holds it
    assert lock.acquire_read(timeout=0)
    lock.release_read()


def test_a_waiting_writer_goes_before_readers_that_arrive_after_it():
    lock = RWLock()
    assert lock.acquire_read(timeout=0)
    wrote = threading.Event()

    def writer():
        with lock.write():
            wrote.set()

    t = threading.Thread(target=writer)
    t.start()
    while not lock._writers_waiting:  # the writer is queued behind the reader
        threading.Event().wait(0.001)
    assert not lock.acquire_read(timeout=0.01)  # a new reader waits for the writer
    lock.release_read()
    t.join(5)
    assert wrote.is_set() and lock.idle
