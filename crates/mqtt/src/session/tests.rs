//! The session in paused time: `tokio::time::advance` moves the clock the
//! deadlines are measured on, and every input names its `now`.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{advance, Instant};

use super::*;
use crate::v4::{Connect, PubRec, SubscribeFilter, SubscribeReasonCode};

const D: &str = "dev-1";
const C2D_FILTER: &str = "devices/dev-1/messages/devicebound/#";

fn accepted(keep_alive_secs: u16, token_lifetime: Option<Duration>, subs: SubscriptionSet) -> Accepted {
    Accepted {
        device_id: D.into(),
        keep_alive_secs,
        token_lifetime,
        subscriptions: subs,
        session_present: !subs.is_empty(),
        will: None,
    }
}

fn session(keep_alive_secs: u16) -> Session {
    Session::accept(accepted(keep_alive_secs, None, SubscriptionSet::EMPTY), Instant::now()).0
}

fn packet(s: &mut Session, p: Packet) -> Vec<Action> {
    s.handle(Instant::now(), Input::Packet(p))
}

fn tick(s: &mut Session) -> Vec<Action> {
    s.handle(Instant::now(), Input::Tick)
}

fn subscribe(s: &mut Session, pkid: u16, filters: &[(&str, QoS)]) -> Vec<Action> {
    let mut sub = Subscribe::new_many(filters.iter().map(|(f, q)| SubscribeFilter::new((*f).into(), *q)));
    sub.pkid = pkid;
    packet(s, Packet::Subscribe(sub))
}

fn puback(s: &mut Session, pkid: u16) -> Vec<Action> {
    packet(s, Packet::PubAck(PubAck::new(pkid)))
}

fn messages(seqs: std::ops::Range<i64>) -> Input {
    Input::C2dFetched(
        seqs.map(|seq| C2dMessage { seq, bag: format!("n={seq}"), body: Bytes::from_static(b"hi") })
            .collect(),
    )
}

/// The packet ids of the C2D publishes written.
fn c2d_pkids(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .map(|a| match a {
            Action::Write(Packet::Publish(p)) if p.qos == QoS::AtLeastOnce => p.pkid,
            other => panic!("not a C2D publish: {other:?}"),
        })
        .collect()
}

fn closed_with(actions: &[Action]) -> Option<&Close> {
    match actions.last() {
        Some(Action::Close(c)) => Some(c),
        _ => None,
    }
}

/// A session subscribed to C2D whose window holds `n` messages (seq 0..n).
fn with_c2d_in_flight(n: i64) -> Session {
    let mut s = session(0);
    subscribe(&mut s, 1, &[(C2D_FILTER, QoS::AtLeastOnce)]);
    let sent = s.handle(Instant::now(), messages(0..n));
    assert_eq!(sent.len(), n as usize);
    s
}

#[tokio::test(start_paused = true)]
async fn keep_alive_expires_at_one_and_a_half_times_the_clients() {
    let start = Instant::now();
    let mut s = session(10);
    assert_eq!(s.next_deadline(), Some(start + Duration::from_secs(15)));
    advance(Duration::from_millis(14_999)).await;
    assert!(tick(&mut s).is_empty());
    advance(Duration::from_millis(1)).await;
    assert_eq!(closed_with(&tick(&mut s)), Some(&Close::KeepAlive));
    assert!(s.is_closed());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_is_capped_at_1767_seconds() {
    let start = Instant::now();
    let s = session(u16::MAX);
    assert_eq!(s.next_deadline(), Some(start + MAX_KEEP_ALIVE));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_zero_never_expires() {
    let mut s = session(0);
    assert_eq!(s.next_deadline(), None);
    advance(Duration::from_secs(1_000_000)).await;
    assert!(tick(&mut s).is_empty());
    assert!(!s.is_closed());
}

#[tokio::test(start_paused = true)]
async fn the_token_expiry_closes_the_session() {
    let start = Instant::now();
    let (mut s, _) =
        Session::accept(accepted(60, Some(Duration::from_secs(5)), SubscriptionSet::EMPTY), start);
    assert_eq!(s.next_deadline(), Some(start + Duration::from_secs(5)));
    advance(Duration::from_secs(4)).await;
    assert!(tick(&mut s).is_empty());
    advance(Duration::from_secs(1)).await;
    assert_eq!(closed_with(&tick(&mut s)), Some(&Close::TokenExpired));
}

#[tokio::test(start_paused = true)]
async fn pingreq_is_answered_and_resets_the_deadline() {
    let mut s = session(10);
    advance(Duration::from_secs(10)).await;
    let out = packet(&mut s, Packet::PingReq);
    assert!(matches!(out.as_slice(), [Action::Write(Packet::PingResp)]));
    assert_eq!(s.next_deadline(), Some(Instant::now() + Duration::from_secs(15)));
    advance(Duration::from_secs(10)).await;
    assert!(tick(&mut s).is_empty(), "15 s after the ping, not after the start");
    advance(Duration::from_secs(5)).await;
    assert_eq!(closed_with(&tick(&mut s)), Some(&Close::KeepAlive));
}

#[tokio::test(start_paused = true)]
async fn partial_bytes_count_as_life() {
    let mut s = session(10);
    advance(Duration::from_secs(14)).await;
    s.bytes_received(Instant::now());
    advance(Duration::from_secs(14)).await;
    assert!(tick(&mut s).is_empty());
}

#[tokio::test(start_paused = true)]
async fn subscribe_and_unsubscribe_store_the_set_and_acknowledge() {
    let mut s = session(0);
    let out = subscribe(
        &mut s,
        7,
        &[
            ("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce),
            ("$iothub/methods/POST/#", QoS::ExactlyOnce),
        ],
    );
    let want: SubscriptionSet = [Subscription::DesiredPatches, Subscription::Methods].into_iter().collect();
    match out.as_slice() {
        [Action::StoreSubscriptions(set), Action::Write(Packet::SubAck(ack))] => {
            assert_eq!(*set, want);
            assert_eq!(ack.pkid, 7);
            // QoS 2 is granted as 1.
            assert_eq!(
                ack.return_codes,
                vec![
                    SubscribeReasonCode::Success(QoS::AtMostOnce),
                    SubscribeReasonCode::Success(QoS::AtLeastOnce)
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.subscriptions(), want);

    let mut u = Unsubscribe::new("$iothub/methods/POST/#");
    u.pkid = 8;
    let out = packet(&mut s, Packet::Unsubscribe(u));
    match out.as_slice() {
        [Action::StoreSubscriptions(set), Action::Write(Packet::UnsubAck(ack))] => {
            assert_eq!(*set, [Subscription::DesiredPatches].into_iter().collect());
            assert_eq!(ack.pkid, 8);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_filter_closes_and_stores_nothing() {
    let mut s = session(0);
    let out = subscribe(
        &mut s,
        1,
        &[
            ("$iothub/methods/POST/#", QoS::AtMostOnce),
            ("devices/other/messages/devicebound/#", QoS::AtMostOnce),
        ],
    );
    assert!(matches!(out.as_slice(), [Action::Close(Close::Violation(_))]), "{out:?}");
    assert_eq!(s.subscriptions(), SubscriptionSet::EMPTY);
}

#[tokio::test(start_paused = true)]
async fn the_c2d_window_of_8_fills_and_a_puback_frees_one_slot() {
    let mut s = session(0);
    let out = subscribe(&mut s, 1, &[(C2D_FILTER, QoS::AtLeastOnce)]);
    assert!(matches!(out.last(), Some(Action::FetchC2d { max: C2D_WINDOW })), "{out:?}");
    // While the fetch is out, news of more messages asks for nothing more.
    assert!(s.handle(Instant::now(), Input::C2dAvailable).is_empty());

    let sent = s.handle(Instant::now(), messages(100..108));
    assert_eq!(c2d_pkids(&sent), (1..=8).collect::<Vec<_>>());
    match &sent[0] {
        Action::Write(Packet::Publish(p)) => {
            assert_eq!(p.topic, "devices/dev-1/messages/devicebound/n=100");
            assert_eq!(&p.payload[..], b"hi");
        }
        other => panic!("{other:?}"),
    }
    // Full: more messages queued are not fetched.
    assert!(s.handle(Instant::now(), Input::C2dAvailable).is_empty());

    let out = puback(&mut s, 3);
    assert!(
        matches!(out.as_slice(), [Action::CompleteC2d { seq: 102 }, Action::FetchC2d { max: 1 }]),
        "{out:?}"
    );
    // An empty answer ends the reservation: the next news fetches again.
    assert!(s.handle(Instant::now(), Input::C2dFetched(Vec::new())).is_empty());
    assert!(matches!(
        s.handle(Instant::now(), Input::C2dAvailable).as_slice(),
        [Action::FetchC2d { max: 1 }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_puback_for_an_unknown_id_is_ignored() {
    let mut s = with_c2d_in_flight(2);
    assert!(puback(&mut s, 42).is_empty());
    assert!(!s.is_closed());
    // A duplicate PUBACK completes nothing twice.
    assert_eq!(puback(&mut s, 1).len(), 2);
    assert!(puback(&mut s, 1).is_empty());
}

#[tokio::test(start_paused = true)]
async fn packet_ids_skip_those_in_flight_and_wrap_without_zero() {
    let mut s = with_c2d_in_flight(1); // pkid 1, seq 0
    s.c2d.next_pkid = 65_533;
    s.handle(Instant::now(), Input::C2dAvailable);
    let sent = s.handle(Instant::now(), messages(1..3));
    assert_eq!(c2d_pkids(&sent), vec![65_534, 65_535]);
    // Past 65535 comes 1 — in flight, so skipped — then 2; never 0.
    s.handle(Instant::now(), Input::C2dAvailable);
    let sent = s.handle(Instant::now(), messages(3..4));
    assert_eq!(c2d_pkids(&sent), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn violations_close_the_session() {
    let bad: Vec<(&str, Packet)> = vec![
        ("QoS 2", Packet::Publish(Publish::new("devices/dev-1/messages/events/", QoS::ExactlyOnce, "x"))),
        (
            "foreign topic",
            Packet::Publish(Publish::new("devices/other/messages/events/", QoS::AtMostOnce, "x")),
        ),
        ("second CONNECT", Packet::Connect(Connect::new("dev-1"))),
        ("unexpected packet", Packet::PubRec(PubRec::new(1))),
        (
            "oversized telemetry",
            Packet::Publish(Publish::new(
                "devices/dev-1/messages/events/",
                QoS::AtMostOnce,
                vec![0; MAX_MESSAGE_BYTES + 1],
            )),
        ),
    ];
    for (what, p) in bad {
        let mut s = session(0);
        let out = packet(&mut s, p);
        assert!(matches!(out.as_slice(), [Action::Close(Close::Violation(_))]), "{what}: {out:?}");
        assert!(s.is_closed(), "{what}");
        // Nothing after the close is acted on.
        assert!(packet(&mut s, Packet::PingReq).is_empty(), "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn disconnect_and_kick_close_with_their_reason() {
    let mut s = session(0);
    assert_eq!(closed_with(&packet(&mut s, Packet::Disconnect)), Some(&Close::Disconnect));
    let mut s = session(0);
    assert_eq!(closed_with(&s.handle(Instant::now(), Input::Kicked)), Some(&Close::Kicked));
    assert!(s.handle(Instant::now(), Input::C2dAvailable).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restored_session_delivers_c2d_only_when_subscribed() {
    let subscribed: SubscriptionSet = [Subscription::C2d, Subscription::Methods].into_iter().collect();
    let (_, out) = Session::accept(accepted(0, None, subscribed), Instant::now());
    match out.as_slice() {
        [Action::Write(Packet::ConnAck(ack)), Action::FetchC2d { max: C2D_WINDOW }] => {
            assert!(ack.session_present);
            assert_eq!(ack.code, ConnectReturnCode::Success);
        }
        other => panic!("{other:?}"),
    }

    let methods_only: SubscriptionSet = [Subscription::Methods].into_iter().collect();
    let (mut s, out) = Session::accept(accepted(0, None, methods_only), Instant::now());
    assert!(matches!(out.as_slice(), [Action::Write(Packet::ConnAck(ack))] if ack.session_present));
    assert!(s.handle(Instant::now(), Input::C2dAvailable).is_empty());
    let (_, out) = Session::accept(accepted(0, None, SubscriptionSet::EMPTY), Instant::now());
    assert!(matches!(out.as_slice(), [Action::Write(Packet::ConnAck(ack))] if !ack.session_present));
}

#[tokio::test(start_paused = true)]
async fn telemetry_goes_to_the_hub_before_its_puback() {
    let mut s = session(0);
    let mut p = Publish::new("devices/dev-1/messages/events/a=1", QoS::AtLeastOnce, "body");
    p.pkid = 5;
    p.retain = true;
    match packet(&mut s, Packet::Publish(p)).as_slice() {
        [Action::Telemetry { properties, payload }, Action::Write(Packet::PubAck(ack))] => {
            assert_eq!(&payload[..], b"body");
            assert_eq!(properties.application.get("a"), Some(Some("1")));
            assert_eq!(properties.application.get("mqtt-retain"), Some(Some("true")));
            assert_eq!(ack.pkid, 5);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn twin_requests_are_answered_on_the_response_topic() {
    let mut s = session(0);
    let out = packet(
        &mut s,
        Packet::Publish(Publish::new(
            "$iothub/twin/PATCH/properties/reported/?$rid=9",
            QoS::AtMostOnce,
            "{}",
        )),
    );
    assert!(matches!(out.as_slice(), [Action::ReportedPatch { rid, .. }] if rid == "9"), "{out:?}");
    let out = s.handle(
        Instant::now(),
        Input::TwinResult { rid: "9".into(), status: 204, version: Some(3), body: Bytes::new() },
    );
    match out.as_slice() {
        [Action::Write(Packet::Publish(p))] => assert_eq!(p.topic, "$iothub/twin/res/204/?$rid=9&$version=3"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn pushes_become_publishes() {
    let mut s = session(0);
    let out = s.handle(Instant::now(), Input::Desired { version: 4, body: Bytes::from_static(b"{}") });
    assert!(
        matches!(out.as_slice(), [Action::Write(Packet::Publish(p))] if p.topic == "$iothub/twin/PATCH/properties/desired/?$version=4")
    );
    let out = s.handle(
        Instant::now(),
        Input::Method { name: "reboot".into(), rid: "1".into(), payload: Bytes::new() },
    );
    assert!(
        matches!(out.as_slice(), [Action::Write(Packet::Publish(p))] if p.topic == "$iothub/methods/POST/reboot/?$rid=1")
    );
}

// ---- protocol violations (MQTT 3.1.1 §3.3.2, §3.10.3) ----

#[tokio::test(start_paused = true)]
async fn a_publish_to_a_topic_with_a_wildcard_closes_the_session() {
    for topic in [
        "devices/dev-1/messages/events/a=+",
        "devices/dev-1/messages/events/#",
        "devices/dev-1/messages/events/k=v&x=#y",
        "$iothub/twin/GET/?$rid=+",
    ] {
        let mut s = session(0);
        let out = packet(&mut s, Packet::Publish(Publish::new(topic, QoS::AtMostOnce, "x")));
        assert!(matches!(closed_with(&out), Some(Close::Violation(_))), "{topic}: {out:?}");
        assert_eq!(out.len(), 1, "nothing but the close: {out:?}");
    }
    // The same characters percent-encoded are a property value like any other.
    let mut s = session(0);
    let out = packet(
        &mut s,
        Packet::Publish(Publish::new("devices/dev-1/messages/events/a=%2B%23", QoS::AtMostOnce, "x")),
    );
    let [Action::Telemetry { properties, .. }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(properties.application.get("a"), Some(Some("+#")));
}

#[tokio::test(start_paused = true)]
async fn an_unsubscribe_without_topics_closes_the_session() {
    let mut s = session(0);
    subscribe(&mut s, 1, &[("$iothub/methods/POST/#", QoS::AtMostOnce)]);
    let out = packet(&mut s, Packet::Unsubscribe(Unsubscribe { pkid: 2, topics: vec![] }));
    assert!(matches!(closed_with(&out), Some(Close::Violation(_))), "{out:?}");
    assert_eq!(out.len(), 1, "no UNSUBACK, nothing stored: {out:?}");
}

// ---- the will ----

fn with_will(topic: &str, retain: bool) -> Session {
    let mut a = accepted(10, Some(Duration::from_secs(60)), SubscriptionSet::EMPTY);
    a.will = Some(crate::v4::LastWill::new(topic, "gone", QoS::AtLeastOnce, retain));
    Session::accept(a, Instant::now()).0
}

const WILL_TOPIC: &str = "devices/dev-1/messages/events/%24.ct=text%2Fplain&state=lost";

/// The will's properties and payload, if `end` publishes it.
fn will_of(action: Option<Action>) -> Option<(MessageProperties, Bytes)> {
    match action? {
        Action::Telemetry { properties, payload } => Some((properties, payload)),
        other => panic!("not telemetry: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_will_is_telemetry_with_its_bag_and_the_will_marker() {
    let mut s = with_will(WILL_TOPIC, true);
    assert!(s.has_will());
    let (properties, payload) = will_of(s.end(Ending::Lost)).expect("the will");
    assert_eq!(payload, Bytes::from_static(b"gone"));
    assert_eq!(properties.system.content_type.as_deref(), Some("text/plain"));
    assert_eq!(properties.application.get("state"), Some(Some("lost")));
    assert_eq!(properties.application.get("iothub-MessageType"), Some(Some("Will")));
    assert_eq!(properties.application.get("mqtt-retain"), Some(Some("true")));
    // Published once.
    assert!(s.end(Ending::Lost).is_none());
    assert!(!s.has_will());
    // A bare telemetry topic works too, without the retain marker.
    let mut s = with_will("devices/dev-1/messages/events", false);
    let (properties, _) = will_of(s.end(Ending::Lost)).expect("the will");
    assert_eq!(properties.application.get("mqtt-retain"), None);
    assert_eq!(properties.application.get("iothub-MessageType"), Some(Some("Will")));
}

#[tokio::test(start_paused = true)]
async fn which_endings_publish_the_will() {
    let cases = [
        (Ending::Lost, true),
        (Ending::Closed(Close::KeepAlive), true),
        (Ending::Closed(Close::TokenExpired), true),
        (Ending::Closed(Close::Violation("x".into())), true),
        (Ending::Kicked(Kick::Other), true),
        (Ending::Closed(Close::Kicked), true),
        (Ending::Kicked(Kick::Revoked), false),
        (Ending::Closed(Close::Disconnect), false),
    ];
    for (ending, fires) in cases {
        let mut s = with_will(WILL_TOPIC, false);
        assert_eq!(will_of(s.end(ending.clone())).is_some(), fires, "{ending:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_session_s_own_closes_lead_to_the_will() {
    // Keep-alive expiry, then the loop reports the session's close.
    let mut s = with_will(WILL_TOPIC, false);
    advance(Duration::from_secs(15)).await;
    let out = tick(&mut s);
    let Some(close) = closed_with(&out).cloned() else { panic!("{out:?}") };
    assert!(will_of(s.end(Ending::Closed(close))).is_some());
    // A violation.
    let mut s = with_will(WILL_TOPIC, false);
    let out =
        packet(&mut s, Packet::Publish(Publish::new("devices/other/messages/events/", QoS::AtMostOnce, "")));
    let Some(close) = closed_with(&out).cloned() else { panic!("{out:?}") };
    assert!(will_of(s.end(Ending::Closed(close))).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_discards_the_will_whatever_follows() {
    let mut s = with_will(WILL_TOPIC, false);
    let out = packet(&mut s, Packet::Disconnect);
    assert_eq!(closed_with(&out), Some(&Close::Disconnect));
    assert!(!s.has_will());
    // Even if the loop then sees the socket fail while closing.
    assert!(s.end(Ending::Lost).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_will_on_another_topic_is_ignored() {
    for topic in [
        "devices/dev-2/messages/events/",
        "devices/dev-1/messages/devicebound/",
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        "status/dev-1",
        "devices/dev-1/messages/events/#",
        "",
    ] {
        let mut s = with_will(topic, false);
        assert!(!s.has_will(), "{topic}");
        assert!(s.end(Ending::Lost).is_none(), "{topic}");
    }
}
