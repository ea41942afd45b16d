from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from mercato.events.v1.envelope_pb2 import Envelope
from mercato_common.timestamps import optional_time, timestamp


def test_an_aware_time_of_any_zone_becomes_the_same_instant() -> None:
    paris = timezone(timedelta(hours=1))
    when = datetime(2026, 12, 6, 13, 5, 7, 250_000, tzinfo=paris)
    stamp = timestamp(when)
    assert (stamp.seconds, stamp.nanos) == (int(when.timestamp()), 250_000_000)
    assert stamp.ToDatetime(tzinfo=UTC) == when


def test_an_unset_field_is_none_and_a_set_one_is_an_aware_utc_time() -> None:
    envelope = Envelope()
    assert optional_time(envelope, "time") is None
    envelope.time.CopyFrom(Timestamp(seconds=0))  # the epoch is set, not absent
    assert optional_time(envelope, "time") == datetime(1970, 1, 1, tzinfo=UTC)
