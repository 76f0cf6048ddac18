//! Replays the checked-in fuzz corpora through the entry points the targets
//! call, so CI exercises them on stable Rust (docs/fuzzing.md):
//! `fuzz/corpus/batch/` through `fuzz_batch`, and `fuzz/corpus/decode/`
//! through `fuzz_decode`, checking what decode's named seeds are meant to
//! show:
//!
//! - `ok-*`: frames into packets with nothing left over, under both caps;
//! - `bad-*`: framing fails (or the bytes never complete a packet);
//! - `refused-*`: frames, but a topic or filter in it is refused for `dev1`;
//! - anything else (`text-*`, files cargo-fuzz adds): only replayed.
//!
//! The seeds are written by `regenerate_corpus`:
//! `FERROHUB_REGEN_CORPUS=1 cargo test -p ferrohub-mqtt --test corpus -- --ignored`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use ferrohub_mqtt::{
    fuzz_batch, fuzz_decode, parse_filter, parse_publish, read_packet, write_packet, BytesMut, Connect,
    LastWill, Login, Packet, PubAck, Publish, QoS, Subscribe, SubscribeFilter, Unsubscribe, MAX_PACKET,
    MAX_PACKET_BEFORE_AUTH,
};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode")
}

/// Frames `data` completely: packets, and whether it ended in an error or
/// with incomplete bytes.
fn frame(data: &[u8], max: usize) -> (Vec<Packet>, bool) {
    let mut buf = BytesMut::from(data);
    let mut packets = Vec::new();
    loop {
        match read_packet(&mut buf, max) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => return (packets, !buf.is_empty()),
            Err(_) => return (packets, true),
        }
    }
}

fn refused(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(p) => parse_publish(&p.topic, "dev1").is_err(),
        Packet::Subscribe(s) => s.filters.iter().any(|f| parse_filter(&f.path, "dev1").is_err()),
        Packet::Connect(c) => c.last_will.as_ref().is_some_and(|w| parse_publish(&w.topic, "dev1").is_err()),
        _ => false,
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut entries: Vec<_> = fs::read_dir(corpus_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert!(entries.len() >= 30, "corpus has {} files", entries.len());
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(&path).unwrap();
        fuzz_decode(&data);

        if name.starts_with("ok-") {
            for max in [MAX_PACKET_BEFORE_AUTH, MAX_PACKET] {
                let (packets, broken) = frame(&data, max);
                assert!(!broken && !packets.is_empty(), "{name} should frame cleanly");
                assert!(!packets.iter().any(refused), "{name} should be accepted");
            }
        } else if name.starts_with("bad-") {
            let (_, broken) = frame(&data, MAX_PACKET_BEFORE_AUTH);
            assert!(broken, "{name} should fail framing before auth");
        } else if name.starts_with("refused-") {
            let (packets, broken) = frame(&data, MAX_PACKET);
            assert!(!broken, "{name} should frame");
            assert!(packets.iter().any(refused), "{name} should hold a refused topic");
        }
    }
}

#[test]
fn batch_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/batch");
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert!(entries.len() >= 4, "batch corpus has {} files", entries.len());
    for path in entries {
        fuzz_batch(&fs::read(&path).unwrap());
    }
}

// ---- seed generation ----

fn enc(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        write_packet(p, &mut buf).unwrap();
    }
    buf.to_vec()
}

fn connect(client_id: &str, keep_alive: u16, username: &str, password: &str) -> Connect {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive;
    c.clean_session = false;
    c.login = Some(Login::new(username, password));
    c
}

fn sas(id: &str) -> String {
    format!(
        "SharedAccessSignature sr=hub.example.net%2Fdevices%2F{id}&sig=dGVzdHNpZ25hdHVyZXRlc3RzaWduYXR1cmU%3D&se=1893456000"
    )
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
    let mut p = Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    Packet::Publish(p)
}

fn subscribe(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters.iter().map(|(f, q)| SubscribeFilter::new((*f).to_owned(), *q)).collect(),
    })
}

/// A packet by hand: type byte, remaining length as given, body.
fn raw(first: u8, len: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(len);
    v.extend_from_slice(body);
    v
}

/// CONNECT variable header + client id with the given protocol name/level.
fn connect_with_protocol(name: &[u8], level: u8, mqtt5_properties: bool) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend([level, 0x02, 0, 60]);
    if mqtt5_properties {
        body.push(0);
    }
    body.extend([0, 4]);
    body.extend_from_slice(b"dev1");
    raw(0x10, &[body.len() as u8], &body)
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let node_user = "hub.example.net/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.11.0%3B%20Linux%3B%20x64)";
    let python_user =
        "hub.example.net/dev1/?api-version=2019-10-01&DeviceClientType=py-azure-iot-device%2F2.14.0%2C%2Blinux";
    let node_connect = connect("dev1", 180, node_user, &sas("dev1"));
    let special = "a$b'(c)*:@=";
    let special_encoded = "a%24b%27%28c%29%2A%3A%40%3D";

    let mut with_will = connect("dev1", 60, python_user, &sas("dev1"));
    with_will.last_will =
        Some(LastWill::new("devices/dev1/messages/events/", "offline", QoS::AtLeastOnce, false));
    let mut other_will = with_will.clone();
    other_will.last_will = Some(LastWill::new("devices/dev2/messages/events/", "x", QoS::AtMostOnce, false));

    let node_telemetry = publish(
        "devices/dev1/messages/events/%24.mid=3f1c&%24.cid=c1&temperature%20alert=true&unit=%C2%B0C",
        QoS::AtLeastOnce,
        1,
        br#"{"temperature":21.5}"#,
    );
    let twin_get =
        publish("$iothub/twin/GET/?$rid=6d1b0e1c-7c1b-4f6a-a0a4-2e6f6f0f1c11", QoS::AtMostOnce, 0, b" ");
    let twin_patch = publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        QoS::AtLeastOnce,
        2,
        br#"{"firmware":"1.2.3","battery":null}"#,
    );
    let subs = subscribe(
        1,
        &[
            ("devices/dev1/messages/devicebound/#", QoS::AtLeastOnce),
            ("$iothub/twin/res/#", QoS::AtMostOnce),
            ("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce),
            ("$iothub/methods/POST/#", QoS::AtMostOnce),
        ],
    );
    let mut retained = Publish::new("devices/dev1/messages/events/", QoS::AtLeastOnce, "r");
    retained.pkid = 9;
    retained.retain = true;

    let mut big_connect = vec![0x10, 0x80, 0x80, 0x06]; // remaining length 98 304
    big_connect.extend([0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60]);

    vec![
        ("ok-connect-node-sas", enc(&[Packet::Connect(node_connect.clone())])),
        ("ok-connect-python-sas", enc(&[Packet::Connect(connect("dev1", 60, python_user, &sas("dev1")))])),
        (
            "ok-connect-x509-no-password",
            enc(&[Packet::Connect(connect("dev1", 180, "hub.example.net/dev1/?api-version=2021-04-12", ""))]),
        ),
        (
            "ok-connect-legacy-username",
            enc(&[Packet::Connect(connect(
                "dev1",
                240,
                "hub.example.net/dev1/api-version=2016-11-14&DeviceClientType=iothubclient%2F1.1.0",
                &sas("dev1"),
            ))]),
        ),
        (
            "ok-connect-model-id",
            enc(&[Packet::Connect(connect(
                "dev1",
                300,
                "hub.example.net/dev1/?api-version=2020-09-30&DeviceClientType=c&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1",
                &sas("dev1"),
            ))]),
        ),
        ("ok-connect-with-will", enc(&[Packet::Connect(with_will)])),
        (
            "ok-connect-special-id",
            enc(&[Packet::Connect(connect(
                special,
                180,
                &format!("hub.example.net/{special}/?api-version=2021-04-12"),
                &sas(special_encoded),
            ))]),
        ),
        ("ok-publish-telemetry-node-qos1", enc(std::slice::from_ref(&node_telemetry))),
        (
            "ok-publish-telemetry-python-qos0",
            enc(&[publish(
                "devices/dev1/messages/events/%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&k=v%2Bw",
                QoS::AtMostOnce,
                0,
                b"{}",
            )]),
        ),
        ("ok-publish-telemetry-no-slash", enc(&[publish("devices/dev1/messages/events", QoS::AtMostOnce, 0, b"x")])),
        (
            "ok-publish-telemetry-null-and-empty",
            enc(&[publish("devices/dev1/messages/events/bare&empty=&%24.uid=", QoS::AtLeastOnce, 3, b"")]),
        ),
        (
            "ok-publish-telemetry-encoded-id",
            enc(&[publish("devices/dev%31/messages/events/", QoS::AtLeastOnce, 4, b"py")]),
        ),
        ("ok-publish-twin-get", enc(std::slice::from_ref(&twin_get))),
        ("ok-publish-twin-patch-reported", enc(&[twin_patch])),
        (
            "ok-publish-twin-patch-version-first",
            enc(&[publish("$iothub/twin/PATCH/properties/reported/?$version=4&$rid=abc", QoS::AtMostOnce, 0, b"{}")]),
        ),
        (
            "ok-publish-method-response",
            enc(&[publish("$iothub/methods/res/200/?$rid=1", QoS::AtMostOnce, 0, br#"{"ok":true}"#)]),
        ),
        ("ok-publish-retained", enc(&[Packet::Publish(retained)])),
        ("ok-subscribe-c2d-qos1", enc(&[subscribe(1, &[("devices/dev1/messages/devicebound/#", QoS::AtLeastOnce)])])),
        ("ok-subscribe-twin-res", enc(&[subscribe(2, &[("$iothub/twin/res/#", QoS::AtMostOnce)])])),
        (
            "ok-subscribe-desired",
            enc(&[subscribe(3, &[("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce)])]),
        ),
        ("ok-subscribe-methods", enc(&[subscribe(4, &[("$iothub/methods/POST/#", QoS::AtMostOnce)])])),
        ("ok-subscribe-all-four", enc(std::slice::from_ref(&subs))),
        ("ok-subscribe-qos2-requested", enc(&[subscribe(5, &[("$iothub/twin/res/#", QoS::ExactlyOnce)])])),
        (
            "ok-unsubscribe-methods",
            enc(&[Packet::Unsubscribe(Unsubscribe { pkid: 6, topics: vec!["$iothub/methods/POST/#".into()] })]),
        ),
        ("ok-puback", enc(&[Packet::PubAck(PubAck::new(7))])),
        ("ok-pingreq", enc(&[Packet::PingReq])),
        ("ok-disconnect", enc(&[Packet::Disconnect])),
        (
            "ok-session-node",
            enc(&[Packet::Connect(node_connect.clone()), subs, twin_get, node_telemetry, Packet::PingReq, Packet::Disconnect]),
        ),
        // Framing failures.
        ("bad-remaining-length-too-short", raw(0x30, &[3], &[0, 5, b'd', b'e', b'v'])),
        ("bad-truncated-publish", raw(0x32, &[20], &[0, 4, b'a', b'b'])),
        ("bad-truncated-connect", enc(&[Packet::Connect(node_connect)])[..40].to_vec()),
        ("bad-five-byte-length", raw(0x30, &[0xFF, 0xFF, 0xFF, 0xFF, 0x01], &[])),
        ("bad-oversized-length-field", raw(0x30, &[0xFF, 0xFF, 0xFF, 0x7F], &[0, 1, b'a'])),
        ("bad-oversized-connect-before-auth", big_connect),
        ("bad-qos2-publish", raw(0x34, &[7], &[0, 3, b'a', b'/', b'b', 0, 1])),
        ("bad-qos3-publish", raw(0x36, &[7], &[0, 3, b'a', b'/', b'b', 0, 1])),
        ("bad-publish-pkid-zero", raw(0x32, &[5], &[0, 1, b'a', 0, 0])),
        ("bad-publish-topic-not-utf8", raw(0x30, &[4], &[0, 2, 0xC3, 0x28])),
        ("bad-publish-no-body", raw(0x30, &[0], &[])),
        ("bad-connect-mqtt5", connect_with_protocol(b"MQTT", 5, true)),
        ("bad-connect-mqtt31", connect_with_protocol(b"MQIsdp", 3, false)),
        ("bad-connect-protocol-name", connect_with_protocol(b"MQTX", 4, false)),
        ("bad-connect-will-flags-without-will", raw(0x10, &[10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x18, 0, 60])),
        ("bad-packet-type-0", raw(0x00, &[0], &[])),
        ("bad-packet-type-15", raw(0xF0, &[0], &[])),
        ("bad-connack-from-client", raw(0x20, &[2], &[0, 0])),
        ("bad-pubrel", raw(0x62, &[2], &[0, 1])),
        ("bad-subscribe-no-filters", raw(0x82, &[2], &[0, 1])),
        ("bad-unsubscribe-no-topics", raw(0xA2, &[2], &[0, 1])),
        ("bad-subscribe-reserved-flags", raw(0x80, &[8], &[0, 1, 0, 3, b'a', b'/', b'#', 0])),
        ("bad-subscribe-qos3", raw(0x82, &[6], &[0, 1, 0, 1, b'#', 3])),
        // Frames fine, but the topic is not the device's to use.
        ("refused-publish-zero-length-topic", raw(0x30, &[3], &[0, 0, b'x'])),
        ("refused-publish-other-device", enc(&[publish("devices/dev2/messages/events/", QoS::AtMostOnce, 0, b"x")])),
        ("refused-publish-wildcard-topic", enc(&[publish("devices/+/messages/events/", QoS::AtMostOnce, 0, b"x")])),
        ("refused-publish-wildcard-in-bag", enc(&[publish("devices/dev1/messages/events/a=+&b=#", QoS::AtMostOnce, 0, b"x")])),
        ("refused-publish-desired-patch", enc(&[publish("$iothub/twin/PATCH/properties/desired/?$version=2", QoS::AtMostOnce, 0, b"{}")])),
        ("refused-subscribe-hash", enc(&[subscribe(1, &[("#", QoS::AtMostOnce)])])),
        (
            "refused-subscribe-other-device",
            enc(&[subscribe(1, &[("devices/dev2/messages/devicebound/#", QoS::AtLeastOnce)])]),
        ),
        ("refused-connect-will-other-device", enc(&[Packet::Connect(other_will)])),
        // Text for the string parsers (first line: device id).
        ("text-telemetry-special-id", format!("{special}\ndevices/{special_encoded}/messages/events/%24.mid=1&a").into_bytes()),
        ("text-username-module", b"hub.example.net/dev1/mod1/?api-version=2021-04-12".to_vec()),
        ("text-bag", b"dev1\n%24.mid=1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&k&e=&%zz=%ff".to_vec()),
    ]
}

#[test]
#[ignore = "writes the seed corpus; run with FERROHUB_REGEN_CORPUS=1"]
fn regenerate_corpus() {
    if std::env::var_os("FERROHUB_REGEN_CORPUS").is_none() {
        return;
    }
    let dir = corpus_dir();
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn seeds_are_in_the_corpus() {
    for (name, bytes) in seeds() {
        let stored = fs::read(corpus_dir().join(name)).unwrap_or_default();
        assert_eq!(stored, bytes, "{name} differs from its generator; regenerate the corpus");
    }
}
