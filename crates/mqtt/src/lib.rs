//! IoT Hub's device-facing MQTT protocol, as pure functions: everything the
//! hub's MQTT endpoint needs to know about the protocol, so that the server's
//! connection loop only moves bytes and carries out what this crate decides.
//! No IO.
//!
//! - [`frame`]: [`read_packet`] cuts MQTT 3.1.1 packets out of a buffer with
//!   rumqttc's codec, under the caps [`MAX_PACKET_BEFORE_AUTH`] and
//!   [`MAX_PACKET`]; [`write_packet`] encodes what the hub sends.
//! - [`username`]: the CONNECT username `{host}/{deviceId}/?api-version=...`.
//! - [`topic`]: what a device may publish ([`parse_publish`]) and subscribe to
//!   ([`parse_filter`]), and the topics the hub publishes ([`twin_response`],
//!   [`desired_patch`], [`method_request`], [`c2d`]).
//! - [`bag`]: property bags, split into [`SystemProperties`] and
//!   [`AppProperties`] ([`parse_bag`]) and written back ([`format_bag`]).
//! - [`session`]: one device's session after CONNECT as a state machine
//!   without IO — packets, pushes and time in, [`Action`]s out.
//! - [`error_body`]: the body of a failed twin request.
//! - [`fuzz_decode`]: the fuzzing entry point (see `fuzz/` at the repository root).
//!
//! The codec's types are re-exported ([`v4`], [`mqttbytes`] and the common
//! ones at the root) so the server depends on this crate alone.
//!
//! Reading a CONNECT: `connect.protocol` is always `V4` here (other levels
//! are [`FrameError::UnacceptableProtocol`]); `connect.login` is `None` when
//! both username and password are empty, otherwise `Some(Login { username,
//! password })` with an absent field as `""` (an X.509 device sends a
//! username and no password).

pub mod bag;
pub mod batch;
mod body;
pub mod device;
pub mod frame;
mod fuzz;
mod pct;
pub mod session;
pub mod topic;
pub mod username;

pub use bag::{format_bag, parse_bag, AppProperties, MessageProperties, PropertyBag, SystemProperties};
pub use body::error_body;
pub use frame::{
    read_packet, write_packet, FrameError, MAX_MESSAGE_BYTES, MAX_PACKET, MAX_PACKET_BEFORE_AUTH,
};
pub use fuzz::{fuzz_batch, fuzz_decode};
pub use session::{Accepted, Action, C2dMessage, Close, Ending, Input, Kick, Session};
pub use topic::{
    c2d, desired_patch, granted_qos, method_request, parse_filter, parse_publish, twin_response, Inbound,
    Subscription, SubscriptionSet, TopicError,
};
pub use username::{parse_username, Username, UsernameError};

/// The byte buffers the codec reads from and writes to.
pub use bytes::{Bytes, BytesMut};
pub use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Login, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeFilter, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
/// rumqttc's MQTT codec (3.1.1 in [`v4`]).
pub use rumqttc::mqttbytes::{self, v4, PacketType, QoS};
