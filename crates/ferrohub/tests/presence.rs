//! Presence that is always true: every way a connection ends records
//! Disconnected, `/statistics/service` counts the live connections, and the
//! identity's connection fields follow.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{create_device, service, RawMqtt};
use common::TestHub;
use ferrohub_core::identity::ConnectionState;
use ferrohub_mqtt::v4::Packet;
use ferrohub_mqtt::QoS;

async fn connected_count(hub: &TestHub) -> u64 {
    service(hub).service_statistics().await.unwrap().connected_device_count
}

#[tokio::test]
async fn every_way_a_connection_ends_is_recorded_and_counted() {
    let hub = TestHub::start();
    let s = service(&hub);
    let mut keys = Vec::new();
    for id in ["p1", "p2", "p3"] {
        keys.push(create_device(&hub, id).await);
    }
    assert_eq!(connected_count(&hub).await, 0);
    let before = s.get_device("p1").await.unwrap().connection_state_updated_time;
    let (mut c1, _) = RawMqtt::device(&hub, "p1", &keys[0], true).await;
    let (mut c2, _) = RawMqtt::device(&hub, "p2", &keys[1], true).await;
    let (mut c3, _) = RawMqtt::device(&hub, "p3", &keys[2], false).await;
    assert_eq!(connected_count(&hub).await, 3);
    let p1 = s.get_device("p1").await.unwrap();
    assert_eq!(p1.connection_state, ConnectionState::Connected);
    assert_ne!(p1.connection_state_updated_time, before, "connecting moves the time");

    // A clean DISCONNECT. The hub records the end before it closes the
    // socket, so once the client sees the close the state is there.
    c1.send(Packet::Disconnect).await;
    assert!(c1.closed().await);
    let p1_after = s.get_device("p1").await.unwrap();
    assert_eq!(p1_after.connection_state, ConnectionState::Disconnected);
    assert_ne!(p1_after.connection_state_updated_time, p1.connection_state_updated_time);
    assert_eq!(connected_count(&hub).await, 2);

    // A protocol violation (a publish to another device's topic).
    c2.publish("devices/p3/messages/events/", QoS::AtMostOnce, b"x").await;
    assert!(c2.closed().await);
    assert_eq!(s.get_device("p2").await.unwrap().connection_state, ConnectionState::Disconnected);

    // A takeover: the newer connection stays connected after the old one's
    // end is recorded.
    let (mut c3b, _) = RawMqtt::device(&hub, "p3", &keys[2], false).await;
    assert!(c3.closed().await);
    assert_eq!(s.get_device("p3").await.unwrap().connection_state, ConnectionState::Connected);
    assert_eq!(connected_count(&hub).await, 1);

    // Deleting the device ends its connection too.
    s.delete_device("p3", "*").await.unwrap();
    assert!(c3b.closed().await);
    assert_eq!(connected_count(&hub).await, 0);
}
