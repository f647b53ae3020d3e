"""The sending window on the local wall clock, across daylight-saving changes (zoneinfo)."""

from __future__ import annotations

from datetime import UTC, datetime

from outreach_pipeline.core.schedule_window import SendingWindow, is_open, next_opening, openings

BERLIN_OFFICE = SendingWindow("Europe/Berlin", 9, 17, "01234")  # Monday-Friday 09:00-17:00


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_window_follows_local_time_across_both_dst_changes() -> None:
    # Before 29 March 2026 Berlin is UTC+1: 09:00 local is 08:00 UTC; after, UTC+2: 07:00 UTC.
    assert next_opening(BERLIN_OFFICE, utc(2026, 3, 27, 6)) == utc(2026, 3, 27, 8)
    assert next_opening(BERLIN_OFFICE, utc(2026, 3, 30, 6)) == utc(2026, 3, 30, 7)
    # Friday 16:30 local is open; 17:00 local closes, and the next opening is Monday after the change.
    assert is_open(BERLIN_OFFICE, utc(2026, 3, 27, 15, 30))
    assert not is_open(BERLIN_OFFICE, utc(2026, 3, 27, 16))
    assert next_opening(BERLIN_OFFICE, utc(2026, 3, 27, 16)) == utc(2026, 3, 30, 7)
    # Autumn: back to UTC+1 on 25 October 2026.
    assert next_opening(BERLIN_OFFICE, utc(2026, 10, 23, 20)) == utc(2026, 10, 26, 8)


def test_an_opening_hour_inside_the_spring_gap_moves_past_it() -> None:
    # 02:00-03:00 does not exist in New York on 8 March 2026; a 02:00 window opens at 03:00 local (07:00 UTC).
    night = SendingWindow("America/New_York", 2, 6, "0123456")
    assert next_opening(night, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7)
    assert is_open(night, utc(2026, 3, 8, 9, 59))
    assert not is_open(night, utc(2026, 3, 8, 10))


def test_days_of_week_and_an_always_open_window() -> None:
    weekend = SendingWindow("UTC", 10, 12, "56")
    assert next_opening(weekend, utc(2026, 11, 24, 11)) == utc(2026, 11, 28, 10)  # Tuesday -> Saturday
    always = SendingWindow("UTC", 0, 24, "0123456")
    assert always.always_open and is_open(always, utc(2026, 11, 24, 23, 59))
    assert next_opening(always, utc(2026, 11, 24, 23, 59)) == utc(2026, 11, 24, 23, 59)


def test_openings_list_each_coming_window_from_now() -> None:
    windows = openings(BERLIN_OFFICE, utc(2026, 3, 27, 12))
    assert [next(windows) for _ in range(3)] == [
        (utc(2026, 3, 27, 12), utc(2026, 3, 27, 16)),  # today, from now to 17:00 CET
        (utc(2026, 3, 30, 7), utc(2026, 3, 30, 15)),  # Monday, CEST
        (utc(2026, 3, 31, 7), utc(2026, 3, 31, 15)),
    ]
