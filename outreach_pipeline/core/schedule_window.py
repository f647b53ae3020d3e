"""The sending window: which days and hours mail may go, in a timezone, DST-correct with zoneinfo.

All times in and out are aware UTC datetimes; the window is read on the local wall clock, so
"09:00-17:00 Europe/Berlin" stays 09:00-17:00 local across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class SendingWindow:
    timezone: str
    start_hour: int  # 0..23, local
    end_hour: int  # 1..24, local; 24 is midnight at the end of the day
    days: str  # weekdays allowed, Monday=0, e.g. "01234"

    @property
    def zone(self) -> ZoneInfo:
        return zone_or_utc(self.timezone)

    @property
    def always_open(self) -> bool:
        return self.start_hour == 0 and self.end_hour >= 24 and set(self.days) >= set("0123456")


def zone_or_utc(name: str | None) -> ZoneInfo:
    """A lead's timezone comes from a CSV: an unknown name falls back to UTC rather than failing a send."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _local_bounds(window: SendingWindow, day: datetime) -> tuple[datetime, datetime]:
    """Opening and closing instants (UTC) of the window on local calendar day `day`."""
    zone = window.zone
    opens = datetime.combine(day.date(), time(window.start_hour), tzinfo=zone)
    closes = datetime.combine(day.date() + timedelta(days=1), time(0), tzinfo=zone) if window.end_hour >= 24 \
        else datetime.combine(day.date(), time(window.end_hour), tzinfo=zone)
    # A wall-clock hour inside a spring-forward gap does not exist; the UTC round trip moves it past the gap.
    return opens.astimezone(UTC), closes.astimezone(UTC)


def is_open(window: SendingWindow, at: datetime) -> bool:
    local = at.astimezone(window.zone)
    if str(local.weekday()) not in window.days:
        return False
    opens, closes = _local_bounds(window, local)
    return opens <= at < closes


def next_opening(window: SendingWindow, at: datetime) -> datetime:
    """`at` itself when the window is open then, else the next moment it opens (UTC)."""
    if is_open(window, at):
        return at
    local = at.astimezone(window.zone)
    for offset in range(0, 8):
        day = local + timedelta(days=offset)
        if str(day.weekday()) not in window.days:
            continue
        opens, _ = _local_bounds(window, day)
        if opens > at:
            return opens
    raise ValueError(f"the window {window} never opens")


def window_length(window: SendingWindow, at: datetime) -> timedelta:
    """How long the window lasts on the local day of `at` (23 or 25 hours on DST days for a full day)."""
    opens, closes = _local_bounds(window, at.astimezone(window.zone))
    return closes - opens


def local_day_start(zone: ZoneInfo, at: datetime) -> datetime:
    """Midnight (UTC instant) that began the local calendar day of `at`: where a daily cap resets."""
    local = at.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone).astimezone(UTC)


def openings(window: SendingWindow, at: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Successive (opens, closes) intervals from `at` on; the first starts at `at` when the window is open."""
    day = at.astimezone(window.zone)
    while True:
        if str(day.weekday()) in window.days:
            opens, closes = _local_bounds(window, day)
            if closes > at:
                yield max(opens, at), closes
        day = datetime.combine(day.date() + timedelta(days=1), time(12), tzinfo=window.zone)
