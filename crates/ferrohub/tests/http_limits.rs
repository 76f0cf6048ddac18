//! The HTTPS port's timeouts, connection caps and header limit, and the
//! MQTT port's cap, against a real hub: clients that stall are cut, one
//! host cannot take the ports, and the hub never runs out of file
//! descriptors. Timeouts are shortened by flags; every close is awaited (a
//! read returning end of file or an error) under a deadline.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mqtt::{create_device, now_unix, owner_token, token, RawMqtt};
use common::TestHub;
use ferrohub_mqtt::v4::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Linux's loopback accepts any 127/8 source: a second "host".
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long any one awaited event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);

fn tls_config(hub: &TestHub) -> Arc<rustls::ClientConfig> {
    Arc::new(common::hub_tls(hub).with_no_client_auth())
}

/// A TCP connection to `port` on 127.0.0.1 from `source`.
async fn tcp_from(source: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(SocketAddr::new(HONEST, port)).await
}

/// A TLS connection (handshake done) to `port` from `source`.
/// A TLS connection from `source` once the hub has seen a released place:
/// polled, since nothing tells the client when the hub noticed the close.
async fn tls_once_released(hub: &TestHub, source: IpAddr, port: u16) -> TlsStream<TcpStream> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tls_from(hub, source, port).await {
            Ok(conn) => return conn,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the released place was not given back: {e}"),
        }
    }
}

async fn tls_from(hub: &TestHub, source: IpAddr, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, port).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(hub));
    tokio::time::timeout(DEADLINE, connector.connect("localhost".try_into().unwrap(), tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake hung"))?
}

/// Waits for the hub to close `stream` (end of file or an error; any bytes
/// before it are returned) and how long that took; panics after `limit`.
async fn closed_within(stream: &mut TlsStream<TcpStream>, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.unwrap_or_else(|_| panic!("still open after {limit:?}"));
    (got, start.elapsed())
}

/// Reads one response (head and a Content-Length body) off a raw
/// connection; returns its status.
async fn read_response(stream: &mut TlsStream<TcpStream>) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed before a response: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

/// A REST client from `source` to the hub (the certificate names
/// `localhost`, which is pinned to 127.0.0.1).
fn rest_from(hub: &TestHub, source: IpAddr) -> reqwest::Client {
    let ca = std::fs::read(hub.ca_file()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .local_address(source)
        .resolve("localhost", SocketAddr::new(HONEST, hub.https_port()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn statistics(hub: &TestHub, client: &reqwest::Client) -> reqwest::Result<u16> {
    let res = client
        .get(format!("https://localhost:{}/statistics/service?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(hub))
        .send()
        .await?;
    Ok(res.status().as_u16())
}

#[tokio::test]
async fn stalled_or_silent_connections_are_cut_at_the_header_timeout() {
    let hub = TestHub::start_with(&["--http-header-timeout", "1"]);
    let mut silent = tls_from(&hub, HONEST, hub.https_port()).await.unwrap();
    let mut partial = tls_from(&hub, HONEST, hub.https_port()).await.unwrap();
    partial.write_all(b"GET /statistics/service HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    for conn in [&mut silent, &mut partial] {
        let (got, took) = closed_within(conn, Duration::from_secs(8)).await;
        assert!(got.is_empty(), "no answer to an unfinished request: {got:?}");
        assert!(took < Duration::from_secs(8));
    }
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_timeout_and_ends_at_the_idle_timeout() {
    let hub = TestHub::start_with(&["--http-header-timeout", "1", "--http-idle-timeout", "4"]);
    let mut conn = tls_from(&hub, HONEST, hub.https_port()).await.unwrap();
    let request = format!(
        "GET /statistics/service?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
        owner_token(&hub)
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut conn).await, 200);
    let served = Instant::now();
    // Idle past the header timeout: a pooled connection must still be there.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(2500), conn.read(&mut byte)).await;
    assert!(early.is_err(), "closed {:?} after a response, before the idle timeout", served.elapsed());
    // ... and it still serves.
    conn.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut conn).await, 200);
    let (_, took) = closed_within(&mut conn, Duration::from_secs(12)).await;
    assert!(took >= Duration::from_secs(3), "closed after {took:?}, before the 4 s idle timeout");
}

#[tokio::test]
async fn a_promised_body_never_sent_is_answered_408_and_closed() {
    let hub = TestHub::start_with(&["--http-body-timeout", "1"]);
    let mut conn = tls_from(&hub, HONEST, hub.https_port()).await.unwrap();
    let request = format!(
        "PUT /devices/stalled?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"deviceId\":",
        owner_token(&hub)
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let (got, took) = closed_within(&mut conn, Duration::from_secs(8)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text}");
    // Nothing was created from half a body.
    let client = rest_from(&hub, HONEST);
    let res = client
        .get(format!("https://localhost:{}/devices/stalled?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(&hub))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[tokio::test]
async fn a_200_kb_header_gets_431_and_a_12_kb_one_is_served() {
    let hub = TestHub::start();
    let client = rest_from(&hub, HONEST);
    let url = format!("https://localhost:{}/statistics/service?api-version=2021-04-12", hub.https_port());
    let fits = client
        .get(&url)
        .header("authorization", owner_token(&hub))
        .header("x-padding", "a".repeat(12 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status().as_u16(), 200);

    let mut conn = tls_from(&hub, HONEST, hub.https_port()).await.unwrap();
    let (mut read, mut write) = tokio::io::split(&mut conn);
    let request = format!(
        "GET /statistics/service?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = async {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut got)).await;
        got
    };
    // The hub may close before taking the whole header; that write error
    // is expected, the answer is what counts.
    let (_, got) = tokio::join!(write.write_all(request.as_bytes()), answer);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

/// The test process needs more descriptors than the hub gets.
fn raise_own_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }).unwrap();
    let soft = getrlimit(Resource::Nofile).current;
    assert!(soft.is_none_or(|n| n > 1300), "this test needs an open-files limit above 1300, have {soft:?}");
}

/// What a flood of connections came to.
#[derive(Default)]
struct Flood {
    /// Connections that completed TLS and sent half a request, held open.
    stalled: Vec<TlsStream<TcpStream>>,
    /// Connections whose TLS handshake got no answer (the hub could not
    /// take them), held open too so that they keep their place.
    hung: Vec<TcpStream>,
    /// Connections the hub closed before or during TLS.
    refused: usize,
}

enum Outcome {
    Stalled(Box<TlsStream<TcpStream>>),
    Hung(TcpStream),
    Refused,
}

/// Opens `n` connections from `source`, each completing TLS and sending
/// half a request head, as the attacker did. Stops early once a
/// whole batch got nowhere (the hub no longer accepts anything).
async fn flood(hub: &TestHub, source: IpAddr, n: usize) -> Flood {
    let mut flood = Flood::default();
    let connector = tokio_rustls::TlsConnector::from(tls_config(hub));
    let port = hub.https_port();
    let mut left = n;
    while left > 0 {
        let batch = left.min(50);
        left -= batch;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let connector = connector.clone();
            tasks.spawn(async move {
                let wait = Duration::from_secs(3);
                let Ok(Ok(tcp)) = tokio::time::timeout(wait, tcp_from(source, port)).await else {
                    return Outcome::Refused;
                };
                // Keep a handle on the socket in case the handshake hangs.
                let raw = tcp.into_std().unwrap();
                let keep = TcpStream::from_std(raw.try_clone().unwrap()).unwrap();
                let tcp = TcpStream::from_std(raw).unwrap();
                match tokio::time::timeout(wait, connector.connect("localhost".try_into().unwrap(), tcp))
                    .await
                {
                    Ok(Ok(mut tls)) => {
                        let half = b"GET /statistics/service HTTP/1.1\r\nHost: localhost\r\n";
                        match tls.write_all(half).await {
                            Ok(()) => Outcome::Stalled(Box::new(tls)),
                            Err(_) => Outcome::Refused,
                        }
                    }
                    Ok(Err(_)) => Outcome::Refused,
                    Err(_) => Outcome::Hung(keep),
                }
            });
        }
        let mut progress = false;
        for outcome in tasks.join_all().await {
            match outcome {
                Outcome::Stalled(tls) => {
                    progress = true;
                    flood.stalled.push(*tls);
                }
                Outcome::Hung(tcp) => flood.hung.push(tcp),
                Outcome::Refused => {
                    progress = true;
                    flood.refused += 1;
                }
            }
        }
        if !progress {
            break;
        }
    }
    flood
}

#[tokio::test]
async fn eleven_hundred_stalled_connections_under_1024_open_files_leave_rest_and_mqtt_working() {
    raise_own_open_files_limit();
    let hub = TestHub::start_with_open_files(&[], 1024);
    let key = create_device(&hub, "honest").await;

    let held = flood(&hub, ATTACKER, 1100).await;
    assert!(!held.stalled.is_empty());
    eprintln!("flood: {} stalled, {} hung, {} refused", held.stalled.len(), held.hung.len(), held.refused);

    let start = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), statistics(&hub, &rest_from(&hub, HONEST)))
        .await
        .expect("no REST answer within 5 s")
        .expect("REST call failed");
    assert_eq!(status, 200);
    let password = token("honest", &key, now_unix() + 600);
    let (_mqtt, ack) =
        tokio::time::timeout(Duration::from_secs(5), RawMqtt::connect(&hub, "honest", &password, 60, true))
            .await
            .expect("no CONNACK within 5 s");
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(start.elapsed() < Duration::from_secs(10));

    // Still up and still serving, and it never ran out of descriptors.
    assert_eq!(statistics(&hub, &rest_from(&hub, HONEST)).await.unwrap(), 200);
    let log = hub.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("connection refused"), "the flood was not capped: {log}");
    assert!(held.refused > 0);
    drop(held);
}

#[tokio::test]
async fn one_peer_over_its_cap_is_closed_while_another_gets_in() {
    let hub = TestHub::start_with(&["--max-connections-per-peer", "4"]);
    let port = hub.https_port();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tls_from(&hub, ATTACKER, port).await.unwrap());
    }
    // The fifth is closed before TLS.
    assert!(tls_from(&hub, ATTACKER, port).await.is_err(), "a fifth connection from one peer got TLS");
    assert!(statistics(&hub, &rest_from(&hub, ATTACKER)).await.is_err());
    // Another peer is served.
    assert_eq!(statistics(&hub, &rest_from(&hub, HONEST)).await.unwrap(), 200);
    // A place given back is taken again.
    drop(held.pop());
    held.push(tls_once_released(&hub, ATTACKER, port).await);
}

#[tokio::test]
async fn the_mqtt_port_closes_connections_over_its_cap() {
    let hub = TestHub::start_with(&["--max-mqtt-connections", "2"]);
    let port = hub.mqtt_port();
    let mut held =
        vec![tls_from(&hub, HONEST, port).await.unwrap(), tls_from(&hub, ATTACKER, port).await.unwrap()];
    assert!(tls_from(&hub, HONEST, port).await.is_err(), "a third MQTT connection got TLS");
    // The HTTPS port has its own budget.
    assert_eq!(statistics(&hub, &rest_from(&hub, HONEST)).await.unwrap(), 200);
    drop(held.pop());
    held.push(tls_once_released(&hub, HONEST, port).await);
}

#[tokio::test]
async fn a_websocket_mqtt_connection_outlives_the_http_timeouts() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
    let hub = TestHub::start_with(&[
        "--http-header-timeout",
        "1",
        "--http-idle-timeout",
        "1",
        "--http-body-timeout",
        "1",
    ]);
    let key = create_device(&hub, "ws-idle").await;
    let url = format!("wss://localhost:{}/$iothub/websocket", hub.https_port());
    let mut options = MqttOptions::new("ws-idle", url, hub.https_port());
    options
        .set_transport(Transport::Wss(TlsConfiguration::Rustls(tls_config(&hub))))
        .set_keep_alive(Duration::from_secs(1))
        .set_credentials(
            "localhost/ws-idle/?api-version=2021-04-12",
            token("ws-idle", &key, now_unix() + 600),
        );
    let (_client, mut events) = AsyncClient::new(options, 10);
    let mut connected = None;
    let mut pings_after_timeouts = 0;
    // Four times every HTTP timeout, kept alive by MQTT pings alone.
    let observe = Duration::from_secs(4);
    loop {
        let event =
            tokio::time::timeout(DEADLINE, events.poll()).await.expect("no MQTT event").unwrap_or_else(|e| {
                panic!(
                    "the WebSocket connection failed after {:?}: {e}",
                    connected.map(|c: Instant| c.elapsed())
                )
            });
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                connected = Some(Instant::now());
            }
            Event::Incoming(Packet::PingResp) => {
                let since = connected.expect("ping before CONNACK").elapsed();
                if since > Duration::from_secs(2) {
                    pings_after_timeouts += 1;
                }
                if since > observe {
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(pings_after_timeouts >= 1);
}
