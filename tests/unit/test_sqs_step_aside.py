"""brokers/_aside.py: a consumer keeps out of a queue while a message it handed back
reappears, so that another worker gets the first chance at it (pure: times are given)."""

from __future__ import annotations

from machinery_compat.brokers._aside import EARLY, STEP_ASIDE, StepAside


def test_a_queue_without_handed_back_messages_is_polled_as_asked() -> None:
    aside = StepAside()
    assert aside.wait_for("q", 20, now=100.0) == 20
    assert aside.pause_left(["q"], now=100.0) is None


def test_a_long_poll_ends_before_the_message_reappears() -> None:
    aside = StepAside()
    aside.note("q", visible_at=102.0)
    assert aside.wait_for("q", 20, now=100.0) == 1  # int(102 - EARLY - 100)
    assert aside.wait_for("q", 20, now=101.5) == 0  # a short poll
    assert aside.wait_for("other", 20, now=101.5) == 20


def test_no_poll_from_just_before_it_reappears_until_the_pause_is_over() -> None:
    aside = StepAside()
    aside.note("q", visible_at=102.0)
    for now in (102.0 - EARLY, 102.0, 102.0 + STEP_ASIDE - 0.01):
        assert aside.wait_for("q", 1, now=now) is None
    assert aside.pause_left(["other", "q"], now=102.1) == 102.0 + STEP_ASIDE - 102.1
    assert aside.wait_for("q", 1, now=102.0 + STEP_ASIDE) == 1
    assert aside.pause_left(["q"], now=102.0 + STEP_ASIDE) is None


def test_given_back_at_once_it_pauses_right_away_and_several_messages_add_up() -> None:
    aside = StepAside()
    aside.note("q", visible_at=50.0)  # ChangeMessageVisibility(0) at 50
    aside.note("q", visible_at=53.0)
    assert aside.wait_for("q", 20, now=50.0) is None
    assert aside.wait_for("q", 20, now=50.0 + STEP_ASIDE) == 2  # up to the next one
    assert aside.wait_for("q", 20, now=53.1) is None
    assert aside.wait_for("q", 20, now=54.0) == 20
