//! Cloud-to-device delivery rules: locks, settlements, delivery counts,
//! dead-lettering and the feedback the service asked for.
//!
//! The rules follow Microsoft's cloud-to-device guide
//! (`iot-hub-devguide-messages-c2d`). The store keeps the queue and calls
//! these functions inside the transaction that settles a message, so the
//! decision and the feedback record it yields commit together. Nothing here
//! reads a clock: times are Unix milliseconds passed in by the caller.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;
use crate::{HubError, HubResult};

/// How long a receive (HTTPS, later AMQP) locks a message. Azure's is one
/// minute and cannot be changed.
pub const LOCK_DURATION_MS: i64 = 60_000;
/// Azure's default `maxDeliveryCount` (its range is 1–100).
pub const DEFAULT_MAX_DELIVERY_COUNT: u32 = 10;
/// The largest `maxDeliveryCount` Azure allows.
pub const MAX_DELIVERY_COUNT_LIMIT: u32 = 100;
/// How long a feedback receive locks its batch (Azure's default
/// `feedback.lockDurationAsIso8601`).
pub const FEEDBACK_LOCK_DURATION_MS: i64 = 60_000;
/// How long an unread feedback record is kept (Azure's default
/// `feedback.ttlAsIso8601`).
pub const FEEDBACK_TTL_MS: i64 = 3_600_000;
/// Abandons of a feedback batch after which its records are dropped
/// (Azure's default `feedback.maxDeliveryCount`).
pub const FEEDBACK_MAX_DELIVERY_COUNT: u32 = 10;
/// Most feedback records handed out under one lock: Azure batches up to 64
/// records into one feedback message.
pub const FEEDBACK_BATCH_MAX: usize = 64;

/// What the sender asked to hear about (`iothub-ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AckMode {
    /// No feedback (the default).
    #[default]
    None,
    /// Feedback when the device completes the message.
    Positive,
    /// Feedback when the message is dead-lettered: rejected, expired,
    /// delivered too often, purged.
    Negative,
    /// Both.
    Full,
}

impl AckMode {
    /// Parses `iothub-ack` as a sender gives it: absent means `none`; the
    /// four names are matched ignoring ASCII case (SDKs send lower case);
    /// anything else is refused rather than silently dropping the feedback
    /// the sender wanted.
    pub fn parse(value: Option<&str>) -> HubResult<Self> {
        let Some(text) = value else { return Ok(Self::None) };
        Self::from_name(&text.to_ascii_lowercase()).ok_or_else(|| {
            HubError::invalid(format!("iothub-ack '{text}' is not one of none, positive, negative, full"))
        })
    }

    /// The exact lower-case name (as stored and as sent to devices), or
    /// `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "positive" => Some(Self::Positive),
            "negative" => Some(Self::Negative),
            "full" => Some(Self::Full),
            _ => None,
        }
    }

    /// The lower-case name Azure uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Full => "full",
        }
    }

    fn wants_positive(self) -> bool {
        matches!(self, Self::Positive | Self::Full)
    }

    fn wants_negative(self) -> bool {
        matches!(self, Self::Negative | Self::Full)
    }
}

/// What the receiver of a locked message asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done with it: remove it.
    Complete,
    /// Will never process it: dead-letter it (not possible over MQTT).
    Reject,
    /// Put it back for another try; counts a delivery (not possible over
    /// MQTT, where a connection that ends unacknowledged does the same).
    Abandon,
}

/// How a message left the queue for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device completed it.
    Completed,
    /// The device rejected it.
    Rejected,
    /// Its time to live passed first.
    Expired,
    /// It was abandoned (or left unacknowledged) `maxDeliveryCount` times.
    DeliveryCountExceeded,
    /// The service purged the device's queue.
    Purged,
}

/// What becomes of a locked message after a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSettle {
    /// It leaves the queue.
    Removed(Outcome),
    /// It is enqueued again, unlocked, with this delivery count.
    Requeued {
        /// The delivery count it now has.
        delivery_count: u32,
    },
}

/// Applies a settlement to a message that has been counted as delivered
/// `delivery_count` times so far. Only an abandon counts a delivery; the
/// abandon that brings the count to `max_delivery_count` dead-letters it
/// (Azure: "after the delivery count reaches the max"). `max_delivery_count`
/// is clamped to Azure's range 1–100.
pub fn settle(settlement: Settlement, delivery_count: u32, max_delivery_count: u32) -> AfterSettle {
    match settlement {
        Settlement::Complete => AfterSettle::Removed(Outcome::Completed),
        Settlement::Reject => AfterSettle::Removed(Outcome::Rejected),
        Settlement::Abandon => {
            let counted = delivery_count.saturating_add(1);
            if counted >= max_delivery_count.clamp(1, MAX_DELIVERY_COUNT_LIMIT) {
                AfterSettle::Removed(Outcome::DeliveryCountExceeded)
            } else {
                AfterSettle::Requeued { delivery_count: counted }
            }
        }
    }
}

/// A message an MQTT connection held when the connection ended without its
/// PUBACK: an implicit abandon, so it counts a delivery. Counting is what
/// lets a message that crashes the device before it can acknowledge be
/// dead-lettered instead of redelivered on every reconnect until it expires.
pub fn release_unacknowledged(delivery_count: u32, max_delivery_count: u32) -> AfterSettle {
    settle(Settlement::Abandon, delivery_count, max_delivery_count)
}

/// A feedback record's status (`statusCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeedbackStatus {
    /// Completed by the device.
    Success,
    /// Expired before it was completed.
    Expired,
    /// Dead-lettered after too many deliveries.
    DeliveryCountExceeded,
    /// Rejected by the device.
    Rejected,
    /// Purged by the service.
    Purged,
}

impl FeedbackStatus {
    /// Azure's name, also used as the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Expired",
            Self::DeliveryCountExceeded => "DeliveryCountExceeded",
            Self::Rejected => "Rejected",
            Self::Purged => "Purged",
        }
    }

    /// The stored form back; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Success, Self::Expired, Self::DeliveryCountExceeded, Self::Rejected, Self::Purged]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// The record's `description`: the status name, as in the guide's
    /// example record (`"statusCode": "Success", "description": "Success"`).
    pub fn description(self) -> &'static str {
        self.as_str()
    }
}

/// Which feedback record, if any, a message's final outcome produces under
/// the sender's ack mode: completion is positive; everything that
/// dead-letters it (reject, expiry, delivery count, purge) is negative.
pub fn feedback_status(ack: AckMode, outcome: Outcome) -> Option<FeedbackStatus> {
    let (status, wanted) = match outcome {
        Outcome::Completed => (FeedbackStatus::Success, ack.wants_positive()),
        Outcome::Rejected => (FeedbackStatus::Rejected, ack.wants_negative()),
        Outcome::Expired => (FeedbackStatus::Expired, ack.wants_negative()),
        Outcome::DeliveryCountExceeded => (FeedbackStatus::DeliveryCountExceeded, ack.wants_negative()),
        Outcome::Purged => (FeedbackStatus::Purged, ack.wants_negative()),
    };
    wanted.then_some(status)
}

/// One feedback record as the service reads it
/// (`GET /messages/serviceBound/feedback` returns a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRecord {
    /// The message id of the cloud-to-device message.
    pub original_message_id: String,
    /// Text for the status.
    pub description: String,
    /// What happened to the message.
    pub status_code: FeedbackStatus,
    /// The device it was sent to.
    pub device_id: String,
    /// That device's generation when the message was sent.
    pub device_generation_id: String,
    /// When the outcome happened (for an expiry: the message's expiry time).
    pub enqueued_time_utc: Timestamp,
}

impl FeedbackRecord {
    /// The record for `status`, its description filled in.
    pub fn new(
        status: FeedbackStatus,
        original_message_id: impl Into<String>,
        device_id: impl Into<String>,
        device_generation_id: impl Into<String>,
        at: Timestamp,
    ) -> Self {
        Self {
            original_message_id: original_message_id.into(),
            description: status.description().to_owned(),
            status_code: status,
            device_id: device_id.into(),
            device_generation_id: device_generation_id.into(),
            enqueued_time_utc: at,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ALL_ACKS: [AckMode; 4] = [AckMode::None, AckMode::Positive, AckMode::Negative, AckMode::Full];
    const ALL_OUTCOMES: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::Rejected,
        Outcome::Expired,
        Outcome::DeliveryCountExceeded,
        Outcome::Purged,
    ];

    #[test]
    fn ack_modes_parse_like_the_sdks_send_them() {
        assert_eq!(AckMode::parse(None).unwrap(), AckMode::None);
        for ack in ALL_ACKS {
            assert_eq!(AckMode::parse(Some(ack.as_str())).unwrap(), ack);
            assert_eq!(AckMode::from_name(ack.as_str()), Some(ack));
        }
        assert_eq!(AckMode::parse(Some("Full")).unwrap(), AckMode::Full);
        let e = AckMode::parse(Some("always")).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::ArgumentInvalid);
        assert_eq!(AckMode::from_name("Full"), None, "the stored form is exact");
    }

    #[test]
    fn feedback_follows_the_ack_table() {
        let expected = |ack: AckMode, outcome: Outcome| -> Option<FeedbackStatus> {
            // The guide's table, written out case by case.
            match (ack, outcome) {
                (AckMode::None, _) => None,
                (AckMode::Positive, Outcome::Completed) => Some(FeedbackStatus::Success),
                (AckMode::Positive, _) => None,
                (AckMode::Negative, Outcome::Completed) => None,
                (AckMode::Full, Outcome::Completed) => Some(FeedbackStatus::Success),
                (_, Outcome::Rejected) => Some(FeedbackStatus::Rejected),
                (_, Outcome::Expired) => Some(FeedbackStatus::Expired),
                (_, Outcome::DeliveryCountExceeded) => Some(FeedbackStatus::DeliveryCountExceeded),
                (_, Outcome::Purged) => Some(FeedbackStatus::Purged),
            }
        };
        for ack in ALL_ACKS {
            for outcome in ALL_OUTCOMES {
                assert_eq!(feedback_status(ack, outcome), expected(ack, outcome), "{ack:?} {outcome:?}");
            }
        }
    }

    #[test]
    fn only_abandons_count_and_the_tenth_dead_letters() {
        assert_eq!(settle(Settlement::Complete, 9, 10), AfterSettle::Removed(Outcome::Completed));
        assert_eq!(settle(Settlement::Reject, 0, 10), AfterSettle::Removed(Outcome::Rejected));
        let mut count = 0;
        for _ in 0..9 {
            match settle(Settlement::Abandon, count, DEFAULT_MAX_DELIVERY_COUNT) {
                AfterSettle::Requeued { delivery_count } => {
                    assert_eq!(delivery_count, count + 1);
                    count = delivery_count;
                }
                other => panic!("dead-lettered early at {count}: {other:?}"),
            }
        }
        assert_eq!(
            settle(Settlement::Abandon, count, DEFAULT_MAX_DELIVERY_COUNT),
            AfterSettle::Removed(Outcome::DeliveryCountExceeded)
        );
        assert_eq!(release_unacknowledged(9, 10), AfterSettle::Removed(Outcome::DeliveryCountExceeded));
        assert_eq!(release_unacknowledged(0, 10), AfterSettle::Requeued { delivery_count: 1 });
    }

    #[test]
    fn max_delivery_count_is_clamped_to_azures_range() {
        // 0 would mean "never deliver"; it behaves as 1.
        assert_eq!(settle(Settlement::Abandon, 0, 0), AfterSettle::Removed(Outcome::DeliveryCountExceeded));
        assert_eq!(
            settle(Settlement::Abandon, 150, 1_000),
            AfterSettle::Removed(Outcome::DeliveryCountExceeded)
        );
        assert_eq!(settle(Settlement::Abandon, 98, 1_000), AfterSettle::Requeued { delivery_count: 99 });
    }

    #[test]
    fn feedback_records_have_azures_shape() {
        let at = Timestamp::from_unix_millis(1_438_100_688_789);
        let r = FeedbackRecord::new(FeedbackStatus::Success, "0987654321", "123", "abcdef", at);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "originalMessageId": "0987654321",
                "description": "Success",
                "statusCode": "Success",
                "deviceId": "123",
                "deviceGenerationId": "abcdef",
                "enqueuedTimeUtc": "2015-07-28T16:24:48.7890000Z",
            })
        );
        assert_eq!(serde_json::from_value::<FeedbackRecord>(json).unwrap(), r);
        for s in [
            FeedbackStatus::Success,
            FeedbackStatus::Expired,
            FeedbackStatus::DeliveryCountExceeded,
            FeedbackStatus::Rejected,
            FeedbackStatus::Purged,
        ] {
            assert_eq!(FeedbackStatus::from_name(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(FeedbackStatus::from_name("success"), None);
    }
}
