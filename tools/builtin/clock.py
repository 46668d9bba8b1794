"""`current_time`: the date and time now in an IANA time zone."""

from __future__ import annotations

import datetime
import zoneinfo

from pydantic import BaseModel, Field

from ..tool import ToolError, tool


class CurrentTimeArgs(BaseModel):
    timezone: str = Field("UTC", description="An IANA time zone name, e.g. 'Europe/Paris' or 'America/New_York'",
                          max_length=64)


@tool(input=CurrentTimeArgs)
async def current_time(args: CurrentTimeArgs, ctx) -> dict:
    """The current date and time in an IANA time zone (default UTC)."""
    try:
        zone = zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {args.timezone!r}: use an IANA name such as 'Europe/Paris'") from None
    now = datetime.datetime.now(zone)
    return {"timezone": args.timezone, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A"),
            "utc_offset": now.strftime("%z")}
