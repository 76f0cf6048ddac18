//! The firmware store's limits over real HTTPS against a real hub: uploads
//! that end early leave no temporary file (client gone, hub killed), the
//! concurrent-upload cap, the per-image and total quotas, and the free-space
//! reserve on a small file system.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::disk::SmallDisk;
use common::mqtt::{http, owner_token};
use common::TestHub;
use rand::RngCore;
use serde_json::Value;
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;

fn url(hub: &TestHub, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.https_port())
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// The upload temporaries in the store's directory.
fn temp_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("firmware")) else { return Vec::new() };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".upload-")))
        .collect()
}

/// Every file in the store's directory.
fn store_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("firmware"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls `cond` until it holds. The file system offers no event to wait
/// on, so this is a bounded poll: it fails the test at the deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upload whose body the test feeds chunk by chunk, so it can be held
/// open, finished, or abandoned mid-body.
struct HeldUpload {
    body: Option<mpsc::Sender<Vec<u8>>>,
    response: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl HeldUpload {
    fn start(hub: &TestHub, version: &str, content_length: Option<u64>) -> Self {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
        });
        let mut request = http(hub)
            .post(url(hub, &format!("/firmware-images?version={version}")))
            .header("authorization", owner_token(hub))
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(len) = content_length {
            request = request.header("content-length", len);
        }
        Self { body: Some(tx), response: tokio::spawn(request.send()) }
    }

    async fn send(&self, chunk: Vec<u8>) {
        self.body.as_ref().unwrap().send(chunk).await.unwrap();
    }

    /// Ends the body and returns the hub's answer.
    async fn finish(mut self) -> reqwest::Response {
        self.body.take();
        self.response.await.unwrap().unwrap()
    }

    /// The client goes away mid-body: the request task is cancelled, which
    /// closes its connection.
    async fn abandon(self) {
        self.response.abort();
        let _ = self.response.await;
    }
}

async fn upload(hub: &TestHub, version: &str, body: Vec<u8>) -> reqwest::Response {
    http(hub)
        .post(url(hub, &format!("/firmware-images?version={version}")))
        .header("authorization", owner_token(hub))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn listed(hub: &TestHub) -> Vec<Value> {
    let res = http(hub)
        .get(url(hub, "/firmware-images"))
        .header("authorization", owner_token(hub))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json::<Vec<Value>>().await.unwrap()
}

async fn error_code(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let code =
        res.headers().get("iothub-errorcode").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, code, res.text().await.unwrap())
}

/// Starts an upload over a raw TLS connection and sends `sent` bytes of a
/// body promised to be larger, leaving the connection open.
async fn raw_partial_upload(
    hub: &TestHub,
    sent: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let ca = std::fs::read(hub.ca_file()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.https_port())).await.unwrap();
    // A killed process's socket is reset, not shut down, when unread data
    // (here the hub's TLS session tickets) is left in it; zero linger makes
    // the drop below do the same deterministically.
    tcp.set_zero_linger().unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /firmware-images?version=1.0.0 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        owner_token(hub),
        sent * 8
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&random(sent)).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

#[tokio::test]
async fn an_upload_cut_off_by_its_client_leaves_no_temp_file() {
    let hub = TestHub::start();
    // The client dies: its connection is reset mid-body.
    let conn = raw_partial_upload(&hub, MIB).await;
    eventually("the upload's temporary file", || !temp_files(hub.data_dir()).is_empty()).await;
    drop(conn);
    eventually("the temporary file of the reset upload to go", || temp_files(hub.data_dir()).is_empty())
        .await;

    // The client goes away politely (its connection is closed mid-body).
    let held = HeldUpload::start(&hub, "1.0.0", Some(8 * MIB as u64));
    held.send(random(MIB)).await;
    eventually("the upload's temporary file", || !temp_files(hub.data_dir()).is_empty()).await;
    held.abandon().await;
    eventually("the temporary file of the abandoned upload to go", || temp_files(hub.data_dir()).is_empty())
        .await;

    // The hub goes on: the next upload is stored.
    assert_eq!(upload(&hub, "1.0.1", random(MIB)).await.status().as_u16(), 200);
    assert_eq!(listed(&hub).await.len(), 1);
    assert!(temp_files(hub.data_dir()).is_empty());
}

#[tokio::test]
async fn a_hub_stopped_mid_upload_removes_its_temp_file_on_the_way_out() {
    let mut hub = TestHub::start();
    let held = HeldUpload::start(&hub, "1.0.0", None);
    held.send(random(MIB)).await;
    eventually("the upload's temporary file", || !temp_files(hub.data_dir()).is_empty()).await;
    // SIGTERM: the hub drains for a few seconds, then drops what is still
    // running, this upload included; the process has exited when stop()
    // returns.
    let status = hub.stop();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(temp_files(hub.data_dir()), Vec::<PathBuf>::new());
    held.abandon().await;
}

#[tokio::test]
async fn a_hub_killed_mid_upload_leaves_no_temp_file_after_restart() {
    let mut hub = TestHub::start();
    let held = HeldUpload::start(&hub, "1.0.0", None);
    held.send(random(MIB)).await;
    eventually("the upload's temporary file", || !temp_files(hub.data_dir()).is_empty()).await;
    hub.sigkill();
    assert_eq!(temp_files(hub.data_dir()).len(), 1, "SIGKILL leaves the temporary file behind");
    held.abandon().await;
    hub.restart();
    // The store is cleaned while the hub opens, before the ready line.
    assert_eq!(temp_files(hub.data_dir()), Vec::<PathBuf>::new());
    assert!(listed(&hub).await.is_empty());
}

#[tokio::test]
async fn uploads_over_the_concurrency_cap_get_503_with_retry_after() {
    let hub = TestHub::start_with(&["--firmware-max-uploads", "1"]);
    let first = HeldUpload::start(&hub, "1.0.0", None);
    first.send(random(MIB)).await;
    eventually("the first upload's temporary file", || !temp_files(hub.data_dir()).is_empty()).await;

    let res = upload(&hub, "2.0.0", random(MIB)).await;
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, code, body) = error_code(res).await;
    assert_eq!((status, code.as_str()), (503, "ServiceUnavailable"), "{body}");
    assert!(retry_after.is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n > 0)), "Retry-After in seconds");
    assert_eq!(temp_files(hub.data_dir()).len(), 1, "the refused upload wrote nothing");

    // The first goes through, and its slot is free again afterwards.
    first.send(random(MIB)).await;
    assert_eq!(first.finish().await.status().as_u16(), 200);
    assert_eq!(upload(&hub, "2.0.0", random(MIB)).await.status().as_u16(), 200);
    assert_eq!(listed(&hub).await.len(), 2);
}

#[tokio::test]
async fn images_over_the_size_limit_or_the_store_quota_are_refused_and_nothing_is_stored() {
    let hub = TestHub::start_with(&["--firmware-max-image-size", "3MiB", "--firmware-store-quota", "5MiB"]);
    assert_eq!(upload(&hub, "1.0.0", random(3 * MIB)).await.status().as_u16(), 200);
    let before = store_files(hub.data_dir());

    // One byte over the per-image limit: refused from Content-Length.
    let (status, code, body) = error_code(upload(&hub, "1.0.1", random(3 * MIB + 1)).await).await;
    assert_eq!((status, code.as_str()), (413, "MessageTooLarge"), "{body}");
    assert!(body.contains("--firmware-max-image-size"), "{body}");
    // A client that writes far more than the hub reads after refusing still
    // gets the answer, not a reset.
    let (status, code, body) = error_code(upload(&hub, "1.0.1", vec![7u8; 80 * MIB]).await).await;
    assert_eq!((status, code.as_str()), (413, "MessageTooLarge"), "{body}");

    // 3 MiB stored + 3 MiB > 5 MiB: refused from Content-Length ...
    let (status, code, body) = error_code(upload(&hub, "1.0.2", random(3 * MIB)).await).await;
    assert_eq!((status, code.as_str()), (403, "IotHubQuotaExceeded"), "{body}");
    assert!(body.contains("--firmware-store-quota"), "{body}");
    // ... and without one (chunked), once the bytes written cross it.
    let held = HeldUpload::start(&hub, "1.0.3", None);
    for _ in 0..3 {
        if held.body.as_ref().unwrap().send(random(MIB)).await.is_err() {
            break; // the hub answered and stopped reading
        }
    }
    let (status, code, body) = error_code(held.finish().await).await;
    assert_eq!((status, code.as_str()), (403, "IotHubQuotaExceeded"), "{body}");

    assert_eq!(store_files(hub.data_dir()), before, "nothing stored, no temporary file left");
    assert_eq!(listed(&hub).await.len(), 1);
    // What still fits is taken.
    assert_eq!(upload(&hub, "1.0.4", random(2 * MIB)).await.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_eat_into_the_free_space_reserve_is_refused_with_507() {
    let Some(disk) = SmallDisk::mount("20m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let hub = TestHub::start_in(Some(disk.mount.join("data")), &["--firmware-free-space-reserve", "8MiB"]);
    // About 19 MiB are free; 14 MiB would leave less than 8.
    let (status, code, body) = error_code(upload(&hub, "1.0.0", random(14 * MIB)).await).await;
    assert_eq!((status, code.as_str()), (507, "InsufficientStorage"), "{body}");
    // Without Content-Length the check runs while writing.
    let held = HeldUpload::start(&hub, "1.0.1", None);
    for _ in 0..14 {
        if held.body.as_ref().unwrap().send(random(MIB)).await.is_err() {
            break;
        }
    }
    let (status, code, body) = error_code(held.finish().await).await;
    assert_eq!((status, code.as_str()), (507, "InsufficientStorage"), "{body}");
    assert!(temp_files(hub.data_dir()).is_empty());
    assert!(listed(&hub).await.is_empty());

    assert_eq!(upload(&hub, "1.0.2", random(MIB)).await.status().as_u16(), 200);
    assert_eq!(listed(&hub).await.len(), 1);
}
