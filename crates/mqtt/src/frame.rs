//! Framing: cut MQTT 3.1.1 packets out of a byte buffer with rumqttc's codec,
//! with the size caps and early refusals IoT Hub needs.
//!
//! [`read_packet`] is the only way the server should decode bytes. On top of
//! `rumqttc::mqttbytes::v4::Packet::read` it:
//!
//! - looks at the first byte before waiting for the rest of a packet, so a
//!   packet type a client never sends (CONNACK, SUBACK, UNSUBACK, PINGRESP),
//!   the QoS 2 flow (PUBREC, PUBREL, PUBCOMP, and a QoS 2 PUBLISH), reserved
//!   types 0 and 15, and wrong fixed-header flags are refused at once;
//! - refuses a remaining length above the caller's cap as soon as the length
//!   field is complete, so nothing is buffered or allocated beyond the cap
//!   (the server passes [`MAX_PACKET_BEFORE_AUTH`] until CONNACK 0x00, then
//!   [`MAX_PACKET`]);
//! - refuses an UNSUBSCRIBE without topic filters, which MQTT 3.1.1
//!   §3.10.3 forbids and rumqttc decodes as an empty list;
//! - reports a CONNECT that is not MQTT 3.1.1 as
//!   [`FrameError::UnacceptableProtocol`] (answer CONNACK 0x01, then close);
//!   rumqttc alone would accept level 5 and misparse it, and reports MQTT 3.1
//!   (`MQIsdp`) as a bad protocol name.
//!
//! After any error the buffer's content is unspecified: close the connection.

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use rumqttc::mqttbytes::{self, PacketType, QoS};

/// Cap on a packet's remaining length before the device is authenticated.
///
/// A CONNECT from an Azure device SDK is well under 1 KiB: host name, a device
/// id of at most 128 characters, `api-version`, `DeviceClientType` and
/// `model-id` in the username, and a SAS token of a few hundred bytes as the
/// password. 8 KiB leaves room for long host names, user agents and a small
/// will message while keeping what an unauthenticated peer can make the hub
/// buffer small. A CONNECT above the cap (say, a will message of more than
/// about 7 KiB) is refused by closing the connection.
pub const MAX_PACKET_BEFORE_AUTH: usize = 8 * 1024;

/// IoT Hub's largest device-to-cloud message: 256 KiB. The Node and Python
/// SDKs refuse payloads above 262 144 bytes before sending. The server applies
/// it to a telemetry PUBLISH's payload; properties are bounded by the topic.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Cap on a packet's remaining length after authentication: a full
/// [`MAX_MESSAGE_BYTES`] payload plus 64 KiB for the topic (whose length
/// field allows 65 535 bytes, property bag included), the packet id and the
/// topic's length prefix. Anything larger cannot be a valid IoT Hub message,
/// so it is refused before it is buffered.
pub const MAX_PACKET: usize = MAX_MESSAGE_BYTES + 64 * 1024;

/// Why bytes from a device could not become a packet the hub accepts. Every
/// variant means "close the connection"; only
/// [`UnacceptableProtocol`](Self::UnacceptableProtocol) is answered first
/// (see [`FrameError::connack_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a well-formed MQTT 3.1.1 packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The remaining length is above the cap in force.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Remaining length announced by the packet.
        size: usize,
        /// The cap that was passed to [`read_packet`].
        max: usize,
    },
    /// A CONNECT for another protocol version (3 = MQTT 3.1, 5 = MQTT 5).
    #[error("unsupported MQTT protocol level {level}")]
    UnacceptableProtocol {
        /// The protocol level byte of the CONNECT.
        level: u8,
    },
    /// A PUBLISH at QoS 2, which IoT Hub does not support.
    #[error("QoS 2 publish is not supported")]
    QoS2Publish,
    /// A packet type a client never sends to a server, or the QoS 2 flow.
    #[error("unexpected {0:?} packet from a client")]
    Unexpected(PacketType),
    /// A packet the hub built cannot be encoded (only from [`write_packet`]).
    #[error("cannot encode packet: {0}")]
    Encode(&'static str),
}

impl FrameError {
    /// The CONNACK code to send before closing, if any: 0x01 for a CONNECT of
    /// another protocol version; every other error closes without an answer.
    pub fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            Self::UnacceptableProtocol { .. } => Some(ConnectReturnCode::RefusedProtocolVersion),
            _ => None,
        }
    }
}

/// Takes the next complete packet off the front of `buf`.
///
/// `Ok(None)`: more bytes are needed (nothing is consumed). `Ok(Some(_))`:
/// the packet's bytes were removed from `buf`; a PUBLISH payload is a
/// zero-copy [`bytes::Bytes`] view into `buf`'s allocation, so copy it
/// (`Bytes::copy_from_slice`) before keeping it for long. `max_size` caps the
/// remaining length ([`MAX_PACKET_BEFORE_AUTH`] or [`MAX_PACKET`]).
///
/// Never panics, whatever the input (see [`crate::fuzz_decode`]).
pub fn read_packet(buf: &mut BytesMut, max_size: usize) -> Result<Option<Packet>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    screen_first_byte(first)?;

    let header = match mqttbytes::check(buf.iter(), max_size) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(from_codec(e, max_size)),
    };
    let frame_len = header.frame_length();

    if first >> 4 == 1 {
        if let Some(level) = buf.get(..frame_len).and_then(foreign_protocol_level) {
            buf.advance(frame_len.min(buf.len()));
            return Err(FrameError::UnacceptableProtocol { level });
        }
    }

    match Packet::read(buf, max_size) {
        // rumqttc refuses a SUBSCRIBE without filters but not this.
        Ok(Packet::Unsubscribe(u)) if u.topics.is_empty() => {
            Err(FrameError::Malformed("unsubscribe without topic filters"))
        }
        Ok(packet) => Ok(Some(packet)),
        // `check` above already saw the whole frame; kept for safety.
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(from_codec(e, max_size)),
    }
}

/// Encodes a packet the hub sends, appending it to `buf`.
///
/// Unlike `Packet::write`, it refuses (leaving `buf` as it was) what rumqttc
/// would encode wrongly or only half: strings over 65 535 bytes (rumqttc
/// silently truncates their length prefix), a QoS 1 PUBLISH with packet id 0,
/// QoS 2, and lengths over MQTT's 268 435 455.
pub fn write_packet(packet: &Packet, buf: &mut BytesMut) -> Result<usize, FrameError> {
    check_encodable(packet)?;
    let start = buf.len();
    match packet.write(buf, usize::MAX) {
        Ok(n) => Ok(n),
        Err(e) => {
            buf.truncate(start);
            Err(FrameError::Encode(match e {
                mqttbytes::Error::PacketIdZero => "packet id 0",
                mqttbytes::Error::PayloadTooLong => "packet longer than 268435455 bytes",
                _ => "rumqttc refused the packet",
            }))
        }
    }
}

fn check_encodable(packet: &Packet) -> Result<(), FrameError> {
    const MAX_STR: usize = u16::MAX as usize;
    let too_long = FrameError::Encode("string or binary field longer than 65535 bytes");
    match packet {
        Packet::Publish(p) => {
            if p.topic.len() > MAX_STR {
                return Err(too_long);
            }
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce if p.pkid == 0 => return Err(FrameError::Encode("packet id 0")),
                QoS::AtLeastOnce => {}
                QoS::ExactlyOnce => return Err(FrameError::Encode("QoS 2 is not supported")),
            }
        }
        Packet::Connect(c) => {
            let mut fields = vec![c.client_id.len()];
            if let Some(w) = &c.last_will {
                fields.extend([w.topic.len(), w.message.len()]);
            }
            if let Some(l) = &c.login {
                fields.extend([l.username.len(), l.password.len()]);
            }
            if fields.into_iter().any(|n| n > MAX_STR) {
                return Err(too_long);
            }
        }
        Packet::Subscribe(s) if s.filters.iter().any(|f| f.path.len() > MAX_STR) => return Err(too_long),
        Packet::Unsubscribe(u) if u.topics.iter().any(|t| t.len() > MAX_STR) => return Err(too_long),
        _ => {}
    }
    Ok(())
}

/// Refusals decided by the first byte alone, before the rest arrives.
fn screen_first_byte(byte: u8) -> Result<(), FrameError> {
    let flags = byte & 0x0F;
    let fixed_flags = |required: u8| {
        if flags == required {
            Ok(())
        } else {
            Err(FrameError::Malformed("reserved fixed-header flags"))
        }
    };
    match byte >> 4 {
        1 | 4 | 12 | 14 => fixed_flags(0), // CONNECT, PUBACK, PINGREQ, DISCONNECT
        8 | 10 => fixed_flags(0b0010),     // SUBSCRIBE, UNSUBSCRIBE
        3 => match (flags >> 1) & 0b11 {
            0 | 1 => Ok(()),
            2 => Err(FrameError::QoS2Publish),
            _ => Err(FrameError::Malformed("publish with QoS 3")),
        },
        2 => Err(FrameError::Unexpected(PacketType::ConnAck)),
        5 => Err(FrameError::Unexpected(PacketType::PubRec)),
        6 => Err(FrameError::Unexpected(PacketType::PubRel)),
        7 => Err(FrameError::Unexpected(PacketType::PubComp)),
        9 => Err(FrameError::Unexpected(PacketType::SubAck)),
        11 => Err(FrameError::Unexpected(PacketType::UnsubAck)),
        13 => Err(FrameError::Unexpected(PacketType::PingResp)),
        _ => Err(FrameError::Malformed("reserved packet type")),
    }
}

/// For a complete CONNECT frame: the protocol level when the packet asks for
/// a protocol other than MQTT 3.1.1 (`MQTT` level ≠ 4, or MQTT 3.1's
/// `MQIsdp`). `None` when it is 3.1.1 or too broken to tell (the codec then
/// reports it as malformed).
fn foreign_protocol_level(frame: &[u8]) -> Option<u8> {
    // Skip the fixed header: type byte + 1..=4 length bytes (validated by `check`).
    let len_bytes = frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = frame.get(1 + len_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    match (name, level) {
        (b"MQTT", 4) => None,
        (b"MQTT", level) | (b"MQIsdp", level) => Some(level),
        _ => None,
    }
}

fn from_codec(e: mqttbytes::Error, max: usize) -> FrameError {
    use mqttbytes::Error as E;
    FrameError::Malformed(match e {
        E::PayloadSizeLimitExceeded(size) => return FrameError::TooLarge { size, max },
        E::InvalidProtocolLevel(level) => return FrameError::UnacceptableProtocol { level },
        E::MalformedRemainingLength => "remaining length longer than 4 bytes",
        E::InvalidProtocol => "protocol name is not MQTT",
        E::IncorrectPacketFormat => "will flags without a will",
        E::InvalidPacketType(_) => "reserved packet type",
        E::InvalidQoS(_) => "invalid QoS",
        E::PacketIdZero => "packet id 0",
        E::PayloadRequired => "empty packet of a type that needs a body",
        E::TopicNotUtf8 => "string is not UTF-8",
        E::BoundaryCrossed(_) => "field crosses the remaining length",
        E::MalformedPacket => "packet shorter than its fields",
        E::EmptySubscription => "subscribe without filters",
        _ => "rejected by the codec",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rumqttc::mqttbytes::v4::{
        ConnAck, Connect, LastWill, Login, PubAck, Publish, SubAck, SubscribeReasonCode,
    };

    fn encode(p: &Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        write_packet(p, &mut b).unwrap();
        b.to_vec()
    }

    fn azure_connect() -> Connect {
        let mut c = Connect::new("dev1");
        c.clean_session = false;
        c.keep_alive = 180;
        c.login = Some(Login::new(
            "hub.example/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4",
            "SharedAccessSignature sr=hub.example%2Fdevices%2Fdev1&sig=abc%3D&se=1700000000",
        ));
        c
    }

    #[test]
    fn reads_packets_split_anywhere() {
        let connect = Packet::Connect(azure_connect());
        let mut publish = Publish::new("devices/dev1/messages/events/a=1", QoS::AtLeastOnce, "hi");
        publish.pkid = 7;
        let publish = Packet::Publish(publish);
        let mut bytes = encode(&connect);
        bytes.extend(encode(&publish));
        bytes.extend(encode(&Packet::PingReq));
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(p) = read_packet(&mut buf, MAX_PACKET).unwrap() {
                got.push(p);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(p) = read_packet(&mut buf, MAX_PACKET).unwrap() {
                got.push(p);
            }
            assert_eq!(got, vec![connect.clone(), publish.clone(), Packet::PingReq], "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn login_and_x509_connects() {
        let mut buf = BytesMut::from(&encode(&Packet::Connect(azure_connect()))[..]);
        let Some(Packet::Connect(c)) = read_packet(&mut buf, MAX_PACKET_BEFORE_AUTH).unwrap() else {
            panic!("not a connect")
        };
        let login = c.login.unwrap();
        assert!(login.username.starts_with("hub.example/dev1/?"));
        assert!(login.password.starts_with("SharedAccessSignature "));
        assert!(!c.clean_session);

        // X.509: username, no password flag.
        let mut x509 = azure_connect();
        x509.login = Some(Login::new("hub.example/dev1/?api-version=2021-04-12", ""));
        let mut buf = BytesMut::from(&encode(&Packet::Connect(x509))[..]);
        let Some(Packet::Connect(c)) = read_packet(&mut buf, MAX_PACKET_BEFORE_AUTH).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(c.login.unwrap().password, "");
    }

    #[test]
    fn other_protocol_levels_get_connack_1() {
        for (name, level) in [(&b"MQTT"[..], 3u8), (b"MQTT", 5), (b"MQIsdp", 3), (b"MQTT", 0)] {
            let mut body = vec![0, name.len() as u8];
            body.extend_from_slice(name);
            body.extend([level, 0x02, 0, 60, 0, 1, b'd']);
            let mut bytes = vec![0x10, body.len() as u8];
            bytes.extend(body);
            let mut buf = BytesMut::from(&bytes[..]);
            let err = read_packet(&mut buf, MAX_PACKET_BEFORE_AUTH).unwrap_err();
            assert_eq!(err, FrameError::UnacceptableProtocol { level });
            assert_eq!(err.connack_code(), Some(ConnectReturnCode::RefusedProtocolVersion));
            assert!(buf.is_empty());
        }
        // Another protocol name is just malformed.
        let bytes = [0x10, 8, 0, 2, b'X', b'Y', 4, 2, 0, 60];
        let err = read_packet(&mut BytesMut::from(&bytes[..]), MAX_PACKET).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)));
        assert_eq!(err.connack_code(), None);
    }

    #[test]
    fn refusals_from_the_first_byte() {
        let cases: [(u8, FrameError); 9] = [
            (0x34, FrameError::QoS2Publish),
            (0x36, FrameError::Malformed("publish with QoS 3")),
            (0x20, FrameError::Unexpected(PacketType::ConnAck)),
            (0x50, FrameError::Unexpected(PacketType::PubRec)),
            (0x62, FrameError::Unexpected(PacketType::PubRel)),
            (0x90, FrameError::Unexpected(PacketType::SubAck)),
            (0xD0, FrameError::Unexpected(PacketType::PingResp)),
            (0x00, FrameError::Malformed("reserved packet type")),
            (0x80, FrameError::Malformed("reserved fixed-header flags")),
        ];
        for (byte, want) in cases {
            // Only the first byte has arrived.
            assert_eq!(read_packet(&mut BytesMut::from(&[byte][..]), MAX_PACKET), Err(want), "{byte:#x}");
        }
        assert_eq!(
            read_packet(&mut BytesMut::from(&[0xF0][..]), MAX_PACKET).unwrap_err().connack_code(),
            None
        );
    }

    #[test]
    fn size_caps_apply_before_the_body_arrives() {
        // PUBLISH announcing 9000 bytes; only the header is here.
        let mut buf = BytesMut::from(&[0x30, 0xA8, 0x46][..]);
        assert_eq!(
            read_packet(&mut buf, MAX_PACKET_BEFORE_AUTH),
            Err(FrameError::TooLarge { size: 9000, max: MAX_PACKET_BEFORE_AUTH })
        );
        assert_eq!(read_packet(&mut buf, MAX_PACKET), Ok(None));
        // Largest legal length field.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(read_packet(&mut buf, MAX_PACKET), Err(FrameError::TooLarge { .. })));
        // Five-byte length.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
        assert!(matches!(read_packet(&mut buf, MAX_PACKET), Err(FrameError::Malformed(_))));
        // A full 256 KiB telemetry message with a long topic fits after auth.
        let topic = format!("devices/dev1/messages/events/{}", "k=v&".repeat(2000));
        let mut p = Publish::new(topic, QoS::AtLeastOnce, vec![0u8; MAX_MESSAGE_BYTES]);
        p.pkid = 1;
        let bytes = encode(&Packet::Publish(p));
        assert!(read_packet(&mut BytesMut::from(&bytes[..]), MAX_PACKET).unwrap().is_some());
    }

    #[test]
    fn malformed_bodies() {
        let cases: [&[u8]; 9] = [
            &[0x30, 0x02, 0x00, 0x05],                         // topic length beyond the packet
            &[0x30, 0x00],                                     // publish without topic
            &[0x32, 0x03, 0x00, 0x01, b'a'],                   // QoS 1 without packet id
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],       // packet id 0
            &[0x82, 0x02, 0x00, 0x01],                         // subscribe without filters
            &[0xA2, 0x02, 0x00, 0x01],                         // unsubscribe without filters
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], // requested QoS 3
            &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],             // topic not UTF-8
            &[0x10, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x18, 0, 60], // will QoS without will flag
        ];
        for bytes in cases {
            let r = read_packet(&mut BytesMut::from(bytes), MAX_PACKET);
            assert!(matches!(r, Err(FrameError::Malformed(_))), "{bytes:x?}: {r:?}");
        }
    }

    #[test]
    fn zero_length_topic_decodes_and_is_left_to_the_topic_parser() {
        let mut buf = BytesMut::from(&[0x30, 0x02, 0x00, 0x00][..]);
        let Some(Packet::Publish(p)) = read_packet(&mut buf, MAX_PACKET).unwrap() else { panic!() };
        assert_eq!(p.topic, "");
    }

    #[test]
    fn write_packet_refuses_what_rumqttc_gets_wrong() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let long = Publish::new("t".repeat(70_000), QoS::AtMostOnce, "x");
        assert!(write_packet(&Packet::Publish(long), &mut buf).is_err());
        let pkid0 = Publish::new("t", QoS::AtLeastOnce, "x");
        assert!(write_packet(&Packet::Publish(pkid0), &mut buf).is_err());
        let qos2 = Publish { pkid: 1, ..Publish::new("t", QoS::ExactlyOnce, "x") };
        assert!(write_packet(&Packet::Publish(qos2), &mut buf).is_err());
        let mut c = Connect::new("d");
        c.last_will = Some(LastWill::new("t", vec![0u8; 70_000], QoS::AtMostOnce, false));
        assert!(write_packet(&Packet::Connect(c), &mut buf).is_err());
        assert_eq!(&buf[..], b"keep");

        // What the hub sends encodes as expected.
        let out = encode(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, true)));
        assert_eq!(out, [0x20, 0x02, 0x01, 0x00]);
        let out = encode(&Packet::SubAck(SubAck::new(
            3,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Success(QoS::AtMostOnce),
            ],
        )));
        assert_eq!(out, [0x90, 0x04, 0x00, 0x03, 0x01, 0x00]);
        assert_eq!(encode(&Packet::PubAck(PubAck::new(9))), [0x40, 0x02, 0x00, 0x09]);
        assert_eq!(encode(&Packet::PingResp), [0xD0, 0x00]);
    }
}
