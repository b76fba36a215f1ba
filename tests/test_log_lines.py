"""Throttled progress lines for logs (``archbench.log_lines``)."""

from archbench.log_lines import DEFAULT_EVERY_S, Throttle, every_s


def test_first_event_per_key_then_once_per_interval():
    now = [0.0]
    t = Throttle(every=10, clock=lambda: now[0])
    assert t.due("a") and t.due("b") and not t.due("a")
    now[0] = 9.9
    assert not t.due("a")
    now[0] = 10.0
    assert t.due("a") and not t.due("a") and t.due("b")


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARCHBENCH_LOG_EVERY_S", "5")
    assert every_s() == 5 and Throttle().every == 5
    monkeypatch.setenv("ARCHBENCH_LOG_EVERY_S", "soon")
    assert every_s() == DEFAULT_EVERY_S
    monkeypatch.delenv("ARCHBENCH_LOG_EVERY_S")
    assert every_s() == DEFAULT_EVERY_S
