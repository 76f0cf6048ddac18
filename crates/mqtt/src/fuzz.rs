//! The fuzzing entry points, shared by the targets in `fuzz/fuzz_targets/`
//! (`decode`, `batch`) and the corpus replay tests.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;

use crate::bag::{format_bag, parse_bag, MessageProperties};
use crate::batch::{parse_batch, APP_PREFIX};
use crate::frame::{read_packet, write_packet, FrameError, MAX_PACKET, MAX_PACKET_BEFORE_AUTH};
use crate::pct::quote;
use crate::topic::{
    c2d, granted_qos, method_request, parse_filter, parse_publish, twin_response, Inbound, Subscription,
};
use crate::username::parse_username;

/// Feeds arbitrary bytes through every decoder in this crate.
///
/// The bytes are framed with [`read_packet`] under both caps, once whole and
/// once in small pieces (as a socket may deliver them), and each packet's
/// strings go through the username, topic, filter and bag parsers; the bytes
/// as text go through those parsers too. Decoding must never panic; the
/// `assert`s here check invariants whose failure is a bug: framing must not
/// depend on how the bytes arrive, a decoded PUBLISH must re-encode to
/// itself, and a parsed bag must survive [`format_bag`].
pub fn fuzz_decode(data: &[u8]) {
    let chunk = usize::from(data.first().copied().unwrap_or(0) % 13) + 1;
    for max in [MAX_PACKET_BEFORE_AUTH, MAX_PACKET] {
        let whole = frame_all(data, data.len().max(1), max);
        let pieces = frame_all(data, chunk, max);
        assert_eq!(whole, pieces, "framing depends on how the bytes arrive");
    }

    let text = String::from_utf8_lossy(data);
    exercise_text(&text, "dev1");
    if let Some((device_id, rest)) = text.split_once('\n') {
        exercise_text(rest, device_id);
    }
}

/// Every packet `data` frames into, fed `chunk` bytes at a time, and the
/// error that ended it, if any.
fn frame_all(data: &[u8], chunk: usize, max: usize) -> (Vec<Packet>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match read_packet(&mut buf, max) {
                Ok(Some(packet)) => {
                    exercise_packet(&packet);
                    packets.push(packet);
                }
                Ok(None) => break,
                Err(e) => return (packets, Some(e)),
            }
        }
    }
    (packets, None)
}

fn exercise_packet(packet: &Packet) {
    match packet {
        Packet::Connect(connect) => {
            let device = match &connect.login {
                Some(login) => parse_username(&login.username).map(|u| u.device_id).unwrap_or("dev1"),
                None => "dev1",
            };
            if let Some(will) = &connect.last_will {
                exercise_topic(&will.topic, device);
            }
            exercise_topic(&connect.client_id, device);
        }
        Packet::Publish(publish) => {
            exercise_topic(&publish.topic, "dev1");
            let mut out = BytesMut::new();
            if write_packet(packet, &mut out).is_ok() {
                let again = read_packet(&mut out, usize::MAX);
                assert_eq!(again, Ok(Some(Packet::Publish(publish.clone()))), "publish re-encodes to itself");
            }
        }
        Packet::Subscribe(subscribe) => {
            for filter in &subscribe.filters {
                let _ = parse_filter(&filter.path, "dev1");
                let _ = granted_qos(filter.qos);
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            for topic in &unsubscribe.topics {
                let _ = parse_filter(topic, "dev1");
            }
        }
        _ => {}
    }
}

fn exercise_text(text: &str, device_id: &str) {
    let _ = parse_username(text);
    exercise_topic(text, device_id);
    let _ = method_request(text, text);
    let _ = c2d(device_id, text);
    if !device_id.is_empty() {
        let filter = format!("devices/{}/messages/devicebound/#", quote(device_id));
        assert_eq!(parse_filter(&filter, device_id), Ok(Subscription::C2d), "encoded id matches");
    }
    check_bag(text);
}

fn exercise_topic(topic: &str, device_id: &str) {
    match parse_publish(topic, device_id) {
        Ok(Inbound::Telemetry(bag)) => check_bag(bag.as_raw()),
        Ok(Inbound::TwinGet { rid } | Inbound::TwinPatchReported { rid }) => {
            let _ = twin_response(200, rid, Some(1));
        }
        Ok(Inbound::MethodResponse { .. }) | Err(_) => {}
    }
    let _ = parse_filter(topic, device_id);
}

/// A parsed bag, written back and parsed again, is unchanged.
fn check_bag(raw: &str) {
    let parsed: MessageProperties = parse_bag(raw);
    let again = parse_bag(&format_bag(&parsed.system, &parsed.application));
    assert_eq!(again, parsed, "bag survives format_bag");
}

/// Feeds arbitrary bytes to the HTTPS telemetry batch parser
/// ([`parse_batch`]). It must never panic, and an accepted batch, written
/// back as a batch (base64 bodies, `iothub-*` property names), must parse
/// to the same messages; each message's properties must also survive the
/// MQTT property bag the hub may forward them in.
pub fn fuzz_batch(data: &[u8]) {
    let Ok(messages) = parse_batch(data) else { return };
    let again = parse_batch(render_batch(&messages).as_bytes());
    // Application properties come out in the order of their keys (as sent,
    // prefix case included), which the rewrite's lower-case prefix may
    // change, so they are compared as sets.
    let sorted = |batch: &[(MessageProperties, Vec<u8>)]| -> Vec<_> {
        batch
            .iter()
            .map(|(props, body)| {
                let mut app: Vec<_> = props.application.iter().collect();
                app.sort_unstable();
                (props.system.clone(), format!("{app:?}"), body.clone())
            })
            .collect()
    };
    let again = again.as_deref().map(sorted);
    assert_eq!(again, Ok(sorted(&messages)), "a batch survives being written back");
    for (props, _) in &messages {
        let bag = format_bag(&props.system, &props.application);
        let parsed = parse_bag(&bag);
        assert_eq!(parsed.system, props.system, "batch system properties survive a bag");
        check_bag(&bag);
    }
}

/// A batch as a device would write it for `messages`.
fn render_batch(messages: &[(MessageProperties, Vec<u8>)]) -> String {
    use base64::Engine as _;
    let entries: Vec<serde_json::Value> = messages
        .iter()
        .map(|(props, body)| {
            let s = &props.system;
            let mut map = serde_json::Map::new();
            for (name, value) in [
                ("iothub-messageid", &s.message_id),
                ("iothub-correlationid", &s.correlation_id),
                ("iothub-userid", &s.user_id),
                ("iothub-to", &s.to),
                ("iothub-expiry", &s.absolute_expiry_time),
                ("iothub-contenttype", &s.content_type),
                ("iothub-contentencoding", &s.content_encoding),
                ("iothub-interface-id", &s.interface_id),
                ("dt-subject", &s.component_name),
            ] {
                if let Some(v) = value {
                    map.insert(name.to_owned(), v.clone().into());
                }
            }
            for (k, v) in props.application.iter() {
                map.insert(format!("{APP_PREFIX}{k}"), v.unwrap_or_default().into());
            }
            serde_json::json!({
                "body": base64::engine::general_purpose::STANDARD.encode(body),
                "properties": map,
            })
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_assorted_inputs() {
        for data in [
            &b""[..],
            b"\x10",
            b"\x30\x80\x80\x80\x80\x01",
            b"\x30\x03\x00\x01a",
            b"\x32\x05\x00\x01a\x00\x01\x30\x00",
            b"dev$1\ndevices/dev%241/messages/events/%24.mid=1&a&b=",
            b"h/d/m/?api-version=1",
            b"\xff\xfe%ff%",
        ] {
            fuzz_decode(data);
            fuzz_batch(data);
        }
        fuzz_batch(
            br#"[{"body":"aGk=","properties":{"iothub-app-K":"1","IOTHUB-APP-K":"2","dt-subject":"c"}}]"#,
        );
    }
}
