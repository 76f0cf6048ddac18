//! A device that connects, reads its twin, reports a property, sends a few
//! telemetry messages, and then (with `--listen`) answers direct methods
//! and prints cloud-to-device messages and desired-property updates.
//!
//! ```text
//! cargo run -p ferrohub-device-client --example device -- \
//!     --connection-string "HostName=localhost;DeviceId=d1;SharedAccessKey=..." \
//!     --ca DIR/ca.pem --mqtt-port 8883 --listen 60
//! ```
//!
//! Each flag falls back to an environment variable: the connection string
//! to `IOTHUB_DEVICE_CONNECTION_STRING`, `--ca` to `FERROHUB_CA`,
//! `--mqtt-port` to `FERROHUB_MQTT_PORT`, `--https-port` to
//! `FERROHUB_HTTPS_PORT` (so `eval "$(ferrohub env)"` sets most of them).
//! `--websocket` connects over `wss://host:https-port/$iothub/websocket`;
//! `--cert FILE --key FILE` present a client certificate (`x509=true`).
//! `--token-ttl SECONDS` signs shorter-lived tokens (renewed halfway when
//! shorter than the default 900 s renewal margin), to watch renewal.
//! `RUST_LOG=debug` shows the connection task's log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrohub_device_client::{DeviceClient, DeviceOptions, Message, Transport};
use serde_json::json;

struct Args {
    connection_string: String,
    options: DeviceOptions,
    listen: Duration,
    messages: u32,
}

fn usage() -> &'static str {
    "usage: device [--connection-string CS] [--ca FILE] [--mqtt-port N] [--websocket] [--https-port N] \
     [--cert FILE --key FILE] [--messages N] [--listen SECONDS] [--token-ttl SECONDS]"
}

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = |text: String| text.parse::<u16>().map_err(|_| format!("not a port: {text}"));
    let mut connection_string = env("IOTHUB_DEVICE_CONNECTION_STRING");
    let mut ca = env("FERROHUB_CA").map(PathBuf::from);
    let mut mqtt_port = env("FERROHUB_MQTT_PORT").map(port).transpose()?;
    let mut https_port = env("FERROHUB_HTTPS_PORT").map(port).transpose()?;
    let (mut websocket, mut cert, mut key, mut listen, mut messages) = (false, None, None, 0u64, 3u32);
    let mut token_ttl = DeviceOptions::default().token_ttl;

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--connection-string" => connection_string = Some(value()?),
            "--ca" => ca = Some(value()?.into()),
            "--mqtt-port" => mqtt_port = Some(port(value()?)?),
            "--https-port" => https_port = Some(port(value()?)?),
            "--websocket" => websocket = true,
            "--cert" => cert = Some(value()?.into()),
            "--key" => key = Some(value()?.into()),
            "--listen" => listen = value()?.parse().map_err(|_| "--listen takes seconds".to_owned())?,
            "--token-ttl" => {
                let secs = value()?.parse().map_err(|_| "--token-ttl takes seconds".to_owned())?;
                token_ttl = Duration::from_secs(secs);
            }
            "--messages" => messages = value()?.parse().map_err(|_| "--messages takes a count".to_owned())?,
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    let connection_string = connection_string
        .ok_or_else(|| format!("no connection string (IOTHUB_DEVICE_CONNECTION_STRING)\n{}", usage()))?;
    let transport = if websocket { Transport::WebSocket { https_port } } else { Transport::Tcp };
    let options = DeviceOptions {
        mqtt_port,
        ca_file: ca,
        transport,
        client_cert: cert,
        client_key: key,
        token_ttl,
        ..DeviceOptions::default()
    };
    Ok(Args { connection_string, options, listen: Duration::from_secs(listen), messages })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), ferrohub_device_client::Error> {
    let client = DeviceClient::connect(&args.connection_string, args.options).await?;
    println!("connected as {}: {:?}", client.device_id(), *client.status().borrow());

    let twin = client.get_twin().await?;
    println!("twin: desired {} reported {}", twin.desired, twin.reported);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let version = client.update_reported(&json!({"example": {"startedAt": now}})).await?;
    println!("reported properties updated to $version {version}");

    for i in 0..args.messages {
        let body = json!({"sequence": i, "temperature": 20.0 + f64::from(i) / 10.0}).to_string();
        let message = Message::new(body)
            .json()
            .with_message_id(format!("msg-{now}-{i}"))
            .with_property("sequence", i.to_string());
        client.send_telemetry(message).await?;
        println!("telemetry {i} acknowledged");
    }

    if !args.listen.is_zero() {
        listen(&client, args.listen).await;
    }
    client.close().await;
    println!("closed");
    Ok(())
}

async fn listen(client: &DeviceClient, duration: Duration) {
    println!(
        "listening for {} s: direct methods, cloud-to-device messages, desired updates",
        duration.as_secs()
    );
    let mut methods = client.method_requests();
    let mut c2d = client.c2d_messages();
    let mut desired = client.desired_updates();
    let mut status = client.status();
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(call) = async { methods.as_mut()?.recv().await } => {
                println!("method {} ({}): {}", call.name, call.rid, call.payload);
                let answer = json!({"method": call.name, "received": call.payload});
                if let Err(e) = call.respond(200, answer).await {
                    println!("could not answer: {e}");
                }
            }
            Some(msg) = async { c2d.as_mut()?.recv().await } => {
                println!(
                    "cloud-to-device message {:?}: {} properties {:?}",
                    msg.message_id,
                    msg.body_text(),
                    msg.properties
                );
            }
            Some(update) = async { desired.as_mut()?.recv().await } => {
                let kind = if update.full { "full document" } else { "patch" };
                println!("desired $version {} ({kind}): {}", update.version, update.body);
            }
            Ok(()) = status.changed() => {
                println!("status: {:?}", *status.borrow_and_update());
            }
        }
    }
}
