//! Times `COUNT()` queries over N synthetic twins in the hub's twin shape:
//! `cargo run --release -p ferrohub-query --example count_bench -- 1000000`.
//! A full scan of JSON documents; see the crate docs ("Cost").

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ferrohub_query::{execute, parse_query};
use serde_json::{json, Value};

const STATUSES: [&str; 7] =
    ["current", "downloading", "verifying", "applying", "rebooting", "error", "rolledback"];

fn twin(i: usize) -> Value {
    let mut t = json!({
        "deviceId": format!("dev{i}"), "modelId": "", "etag": "AAAAAAAAAAM=", "deviceEtag": "MQ==",
        "status": "enabled", "statusUpdateTime": "0001-01-01T00:00:00Z", "connectionState": "Disconnected",
        "lastActivityTime": "0001-01-01T00:00:00Z", "cloudToDeviceMessageCount": 0, "authenticationType": "sas",
        "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "version": 4,
        "tags": {"devicetype": if i.is_multiple_of(3) { "sensor" } else { "chiller" }, "location": {"region": "US"}},
        "properties": {
            "desired": {
                "firmware": {"fwVersion": "2.8.5", "fwPackageURI": "https://secureuri/package.bin", "fwPackageCheckValue": "123456abcde"},
                "$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "$lastUpdatedVersion": 2,
                    "firmware": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z", "$lastUpdatedVersion": 2}},
                "$version": 2,
            },
            "reported": {
                "firmware": {"currentFwVersion": "1.0.0", "pendingFwVersion": "", "fwUpdateStatus": STATUSES[i % 7],
                    "fwUpdateSubstatus": "", "lastFwUpdateStartTime": "", "lastFwUpdateEndTime": ""},
                "$metadata": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z",
                    "firmware": {"$lastUpdated": "2024-05-01T10:00:00.0000000Z"}},
                "$version": 3,
            },
        },
        "capabilities": {"iotEdge": false},
    });
    if !i.is_multiple_of(3) {
        t["configurations"] = json!({"firmware285": {"status": "Applied"}});
    }
    t
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(100_000, |s| s.parse().unwrap());
    let twins: Vec<Value> = (0..n).map(twin).collect();
    for query in [
        "SELECT COUNT() AS n FROM devices WHERE configurations.[[firmware285]].status='Applied' \
         AND properties.reported.firmware.fwUpdateStatus='current'",
        "SELECT COUNT() AS n FROM devices WHERE status = 'enabled'",
        "SELECT properties.reported.firmware.fwUpdateStatus AS s, COUNT() AS n FROM devices \
         GROUP BY properties.reported.firmware.fwUpdateStatus",
    ] {
        let q = parse_query(query).unwrap();
        let start = Instant::now();
        let rows = execute(&q, twins.iter()).unwrap().items.len();
        println!("{n} twins, {rows} result rows, {:?}: {query}", start.elapsed());
    }
}
