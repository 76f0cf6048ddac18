//! Timestamps in the exact text form IoT Hub uses.
//!
//! The core never reads the clock: callers pass `now` in, which keeps the core
//! free of IO and makes every rule testable with fixed times.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant. Serialises as ISO 8601 with seven fraction digits
/// (`2018-12-20T20:37:20.3275207Z`), the way IoT Hub writes `$lastUpdated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// What IoT Hub writes for a time that was never set.
pub const UNSET_TIME: &str = "0001-01-01T00:00:00Z";

impl Timestamp {
    /// The instant `unix_nanos` nanoseconds after the Unix epoch.
    pub fn from_unix_nanos(unix_nanos: i128) -> Self {
        Self(OffsetDateTime::from_unix_timestamp_nanos(unix_nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH))
    }

    /// The instant `unix_millis` milliseconds after the Unix epoch (the unit
    /// the store keeps queue times in).
    pub fn from_unix_millis(unix_millis: i64) -> Self {
        Self::from_unix_nanos(i128::from(unix_millis) * 1_000_000)
    }

    /// Milliseconds since the Unix epoch (sub-millisecond parts dropped).
    pub fn unix_millis(self) -> i64 {
        (self.0.unix_timestamp_nanos().div_euclid(1_000_000)) as i64
    }

    /// Wraps a `time` value (converted to UTC).
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Self(t.to_offset(time::UtcOffset::UTC))
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Parses any RFC 3339 text.
    pub fn parse(text: &str) -> Option<Self> {
        OffsetDateTime::parse(text, &Rfc3339).ok().map(Self::from_datetime)
    }

    /// The IoT Hub text form.
    pub fn to_iso(self) -> String {
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 100
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_iso())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {text}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_seven_fraction_digits() {
        let t = Timestamp::from_unix_nanos(1_545_338_240_327_520_700);
        assert_eq!(t.to_iso(), "2018-12-20T20:37:20.3275207Z");
    }

    #[test]
    fn converts_to_and_from_milliseconds() {
        let t = Timestamp::from_unix_nanos(1_700_000_000_123_456_700);
        assert_eq!(t.unix_millis(), 1_700_000_000_123);
        assert_eq!(Timestamp::from_unix_millis(1_700_000_000_123).to_iso(), "2023-11-14T22:13:20.1230000Z");
    }

    #[test]
    fn round_trips_through_text() {
        let t = Timestamp::from_unix_nanos(1_700_000_000_123_456_700);
        assert_eq!(Timestamp::parse(&t.to_iso()), Some(t));
    }
}
