//! Durability: the hub is SIGKILLed while clients write through the API;
//! after a restart every write it acknowledged is there.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::TestHub;
use ferrohub_service_client::{ClientOptions, NewDevice, ServiceClient};
use serde_json::json;
use tokio::sync::Notify;

/// An acknowledged write: the device exists, and if `tag` is set, its twin's
/// `tags.seq` has at least that value.
#[derive(Debug, Clone)]
struct Ack {
    device_id: String,
    tag: Option<u64>,
}

fn client(hub: &TestHub) -> ServiceClient {
    ServiceClient::new(
        &hub.connection_string(),
        ClientOptions { port: Some(hub.https_port()), ca_file: Some(hub.ca_file()), ..Default::default() },
    )
    .unwrap()
}

/// Writes until the first error (the kill), recording each acknowledgement.
async fn writer(c: ServiceClient, round: usize, w: usize, acks: Arc<Mutex<Vec<Ack>>>, progress: Arc<Notify>) {
    for i in 0u64.. {
        let id = format!("r{round}-w{w}-{i}");
        if c.create_device(&NewDevice::new(&id)).await.is_err() {
            return;
        }
        acks.lock().unwrap().push(Ack { device_id: id.clone(), tag: None });
        progress.notify_one();
        for seq in 1..=2u64 {
            if c.update_twin(&id, &json!({"tags": {"seq": seq}}), "*").await.is_err() {
                return;
            }
            acks.lock().unwrap().push(Ack { device_id: id.clone(), tag: Some(seq) });
            progress.notify_one();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let mut hub = TestHub::start();
    let acks = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3 {
        let progress = Arc::new(Notify::new());
        let c = client(&hub);
        let writers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(writer(c.clone(), round, w, acks.clone(), progress.clone())))
            .collect();
        // Kill once this round has some acknowledged writes, with writers
        // still in flight.
        let start = acks.lock().unwrap().len();
        while acks.lock().unwrap().len() < start + 40 {
            progress.notified().await;
        }
        hub.sigkill();
        for w in writers {
            w.await.unwrap();
        }
        hub.restart();
        let c = client(&hub);
        let all = acks.lock().unwrap().clone();
        for ack in &all {
            let twin =
                c.get_twin(&ack.device_id).await.unwrap_or_else(|e| panic!("{} lost: {e}", ack.device_id));
            if let Some(seq) = ack.tag {
                let stored = twin["tags"]["seq"].as_u64().unwrap_or(0);
                assert!(stored >= seq, "{}: acknowledged seq {seq}, stored {stored}", ack.device_id);
            }
        }
    }
    assert!(acks.lock().unwrap().len() >= 120);
}
