//! A raw MQTT 3.1.1 client over TLS for tests: it sends exactly the packets
//! (or bytes) a test asks for, so tests can also misbehave on purpose.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrohub_mqtt::v4::{ConnAck, Connect, Login, Packet, Publish, Subscribe, SubscribeFilter};
use ferrohub_mqtt::{write_packet, BytesMut, QoS, MAX_PACKET};
use ferrohub_service_client::{ClientOptions, NewDevice, ServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::TestHub;

/// How long a test waits for the hub's next packet before failing.
const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A raw HTTPS client that trusts the hub's CA (for endpoints and
/// requests the service client does not make).
pub fn http(hub: &TestHub) -> reqwest::Client {
    let ca = std::fs::read(hub.ca_file()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// A one-hour `iothubowner` token for the hub.
pub fn owner_token(hub: &TestHub) -> String {
    let cs: ferrohub_core::connection_string::ConnectionString = hub.connection_string().parse().unwrap();
    cs.sas_token(now_unix() + 3600).unwrap()
}

/// A service client for the hub.
pub fn service(hub: &TestHub) -> ServiceClient {
    ServiceClient::new(
        &hub.connection_string(),
        ClientOptions { port: Some(hub.https_port()), ca_file: Some(hub.ca_file()), ..Default::default() },
    )
    .unwrap()
}

/// Creates a device and returns its primary key.
pub async fn create_device(hub: &TestHub, id: &str) -> String {
    let d = service(hub).create_device(&NewDevice::new(id)).await.unwrap();
    d.authentication.symmetric_key.primary_key
}

/// A device SAS token as the Node SDK makes it.
pub fn token(device_id: &str, key: &str, expiry: i64) -> String {
    ferrohub_core::sas::generate_token(&format!("localhost/devices/{device_id}"), key, None, expiry).unwrap()
}

/// The CONNECT the official SDKs send.
pub fn connect_packet(device_id: &str, password: &str, keep_alive: u16, clean: bool) -> Packet {
    let mut c = Connect::new(device_id);
    c.keep_alive = keep_alive;
    c.clean_session = clean;
    c.login = Some(Login::new(format!("localhost/{device_id}/?api-version=2021-04-12"), password));
    Packet::Connect(c)
}

/// One raw connection.
pub struct RawMqtt {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl RawMqtt {
    /// Opens TLS to the hub's MQTT port (nothing sent yet).
    pub async fn open(hub: &TestHub) -> Self {
        Self::open_with_cert(hub, None).await
    }

    /// Opens TLS presenting a client certificate (PEM chain and key files).
    pub async fn open_with_cert(hub: &TestHub, cert: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let config = super::hub_tls(hub);
        let config = match cert {
            None => config.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = rustls_pemfile::certs(&mut std::fs::read(chain).unwrap().as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
                    .unwrap()
                    .unwrap();
                config.with_client_auth_cert(chain, key).unwrap()
            }
        };
        let tcp = TcpStream::connect(("127.0.0.1", hub.mqtt_port())).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        Self { stream, buf: BytesMut::new() }
    }

    /// Opens and CONNECTs; returns the CONNACK.
    pub async fn connect(
        hub: &TestHub,
        device_id: &str,
        password: &str,
        keep_alive: u16,
        clean: bool,
    ) -> (Self, ConnAck) {
        let mut c = Self::open(hub).await;
        c.send(connect_packet(device_id, password, keep_alive, clean)).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects a device with a fresh one-hour token and asserts success.
    pub async fn device(hub: &TestHub, device_id: &str, key: &str, clean: bool) -> (Self, ConnAck) {
        let (c, ack) =
            Self::connect(hub, device_id, &token(device_id, key, now_unix() + 3600), 60, clean).await;
        assert_eq!(ack.code, ferrohub_mqtt::v4::ConnectReturnCode::Success, "CONNACK for {device_id}");
        (c, ack)
    }

    /// Sends a packet.
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        write_packet(&packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends raw bytes; false if the hub already closed.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[&str]) {
        let filters: Vec<_> =
            filters.iter().map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce)).collect();
        self.send(Packet::Subscribe(Subscribe::new_many(filters))).await;
        match self.recv().await {
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 0 or 1 (packet id 1).
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        if qos != QoS::AtMostOnce {
            p.pkid = 1;
        }
        self.send(Packet::Publish(p)).await;
    }

    /// The next packet, or `None` when the hub closed the connection.
    /// Panics after [`RECV_TIMEOUT`] without either.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(RECV_TIMEOUT, self.recv_inner())
            .await
            .expect("no packet and no close from the hub")
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            // The hub's packets are server-to-client ones, which the hub's
            // own (server-side) framing refuses: use the codec directly.
            match Packet::read(&mut self.buf, MAX_PACKET * 2) {
                Ok(p) => return Some(p),
                Err(ferrohub_mqtt::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the hub sent a malformed packet: {e:?}"),
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits for the next PUBLISH, skipping acks; `None` on close.
    pub async fn next_publish(&mut self) -> Option<Publish> {
        loop {
            match self.recv().await? {
                Packet::Publish(p) => return Some(p),
                _ => continue,
            }
        }
    }

    /// True once the hub has closed the connection (packets before the
    /// close are skipped).
    pub async fn closed(&mut self) -> bool {
        while self.recv().await.is_some() {}
        true
    }
}

/// A self-signed client certificate made with openssl: (certificate PEM,
/// key PEM, thumbprint in hex) with the thumbprint's digest `"sha1"` or
/// `"sha256"`.
pub fn self_signed(
    dir: &std::path::Path,
    cn: &str,
    digest: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let cert = dir.join(format!("{cn}.pem"));
    let key = dir.join(format!("{cn}-key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", &format!("-{digest}"), "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let thumb = text.trim().rsplit('=').next().unwrap().replace(':', "");
    (cert, key, thumb)
}
