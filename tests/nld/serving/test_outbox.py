"""Responses on their own thread, at most one per request per stream interval: nothing lost, nothing
reordered, the first and the last never held back."""

from __future__ import annotations

import threading
import time

from nld.engine import Update
from nld.sampling import TokenLogprob
from nld.serving.outbox import Outbox


def piece(i: int, finished: bool = False, error: str | None = None) -> Update:
    return Update("r", [i], finished=finished, error=error, text=f"<{i}>", logprobs=[TokenLogprob(-float(i), [])])


class Sent:
    """A send function that records (key, update, time) and can be held on its first call."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[tuple[str, Update, float]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.done = threading.Event()

    def __call__(self, key: str, update: Update) -> None:
        self.entered.set()
        if self.hold_first and not self.calls:
            assert self.release.wait(10)
        self.calls.append((key, update, time.monotonic()))
        if update.finished:
            self.done.set()

    def ids(self, key: str) -> list[list[int]]:
        return [update.new_ids for sent_key, update, _ in self.calls if sent_key == key]


def test_updates_that_queue_behind_a_busy_send_go_out_as_one_in_order() -> None:
    sent = Sent(hold_first=True)
    outbox: Outbox[str] = Outbox(sent)
    outbox.put("a", piece(0))
    assert sent.entered.wait(10)  # the sender is inside the first send, held
    for i in range(1, 5):
        outbox.put("a", piece(i))
    outbox.put("b", piece(9, finished=True))
    sent.release.set()
    outbox.close()
    assert sent.ids("a") == [[0], [1, 2, 3, 4]]
    merged = sent.calls[1][1] if sent.calls[1][0] == "a" else sent.calls[2][1]
    assert merged.text == "<1><2><3><4>" and [entry.logprob for entry in merged.logprobs or []] == [-1, -2, -3, -4]
    assert sent.ids("b") == [[9]]


def test_within_the_interval_pieces_wait_and_join_but_the_first_and_the_last_do_not() -> None:
    sent = Sent()
    outbox: Outbox[str] = Outbox(sent, interval=0.5)
    began = time.monotonic()
    outbox.put("a", piece(0))
    assert sent.entered.wait(10)  # the first goes at once
    for i in range(1, 4):
        time.sleep(0.01)
        outbox.put("a", piece(i))
    time.sleep(0.55)  # the interval passes: 1..3 go out once, together
    outbox.put("a", piece(4))
    outbox.put("a", piece(5, finished=True))  # the last goes at once, with what waits
    assert sent.done.wait(10)
    outbox.close()
    times = [at - began for _, _, at in sent.calls]
    assert sent.ids("a") == [[0], [1, 2, 3], [4, 5]]
    assert times[0] < 0.2  # the first: at once
    assert 0.48 < times[1] < 0.8  # one interval after the first
    assert times[2] - times[1] < 0.35  # the last did not wait for the next interval (0.5 s)
    assert sent.calls[-1][1].finished


def test_a_failure_goes_at_once_with_the_tokens_that_waited() -> None:
    sent = Sent()
    outbox: Outbox[str] = Outbox(sent, interval=0.5)
    outbox.put("a", piece(0))
    assert sent.entered.wait(10)  # the first went at once
    outbox.put("a", piece(1))  # waits for the interval
    outbox.put("a", piece(2, finished=True, error="boom"))
    assert sent.done.wait(10)
    outbox.close()
    assert sent.ids("a") == [[0], [1, 2]]
    assert sent.calls[-1][1].error == "boom" and sent.calls[-1][2] - sent.calls[0][2] < 0.35


def test_a_failing_send_does_not_stop_the_other_requests() -> None:
    sent = Sent()

    def send(key: str, update: Update) -> None:
        if key == "closed":
            raise RuntimeError("stream closed")
        sent(key, update)

    outbox: Outbox[str] = Outbox(send)
    outbox.put("closed", piece(0, finished=True))
    outbox.put("open", piece(1, finished=True))
    outbox.close()
    assert sent.ids("open") == [[1]]
