//! Optional TLS on the WebSocket listener and the producer API (rustls),
//! checked with independent clients: Node's `ws` over `wss://` and curl
//! over `https://`, both trusting only a certificate made for the test.

use std::process::Stdio;

use herald_tests::{Broker, JWT_SECRET, free_port, token};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_producer_api_over_tls() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = tokio::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "openssl could not make a test certificate"
    );
    let (cert_s, key_s) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    );

    let broker = Broker::start().await?;
    let shutdown = CancellationToken::new();
    let ws_port = free_port()?;
    let gateway = herald_gateway::start(
        herald_gateway::GatewayConfig::from_args([
            "herald-gateway",
            "--kafka-brokers",
            &broker.bootstrap,
            "--listen",
            &format!("127.0.0.1:{ws_port}"),
            "--ops-listen",
            "127.0.0.1:0",
            "--jwt-secret",
            JWT_SECRET,
            "--identities",
            "false",
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        shutdown.clone(),
    )
    .await?;
    let producer = herald_producer::start(
        herald_producer::ProducerConfig::from_args([
            "herald-producer",
            "--kafka-brokers",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--allow-unauthenticated",
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        shutdown.clone(),
    )
    .await?;

    // wss:// with Node's ws, trusting the test certificate only.
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    let script = r#"
import WebSocket from 'ws';
import fs from 'node:fs';
const [url, ca, tok] = process.argv.slice(1);
const ws = new WebSocket(url, ['v12.stomp'], { ca: fs.readFileSync(ca) });
ws.on('open', () => ws.send(`CONNECT\naccept-version:1.2\nAuthorization:${tok}\n\n\0`));
ws.on('message', (d) => { console.log(d.toString().split('\n')[0]); process.exit(0); });
ws.on('error', (e) => { console.log('ERR ' + e.message); process.exit(1); });
"#;
    let out = tokio::process::Command::new("node")
        .current_dir(js)
        .args(["--input-type=module", "-e", script, "--"])
        .arg(format!("wss://127.0.0.1:{ws_port}/ws.communication"))
        .arg(&cert)
        .arg(token("1", "7", "agent"))
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("CONNECTED"),
        "wss client: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that does not trust the certificate is refused by its own TLS check.
    let out = tokio::process::Command::new("node")
        .current_dir(js)
        .args([
            "--input-type=module",
            "-e",
            &script.replace("{ ca: fs.readFileSync(ca) }", "{}"),
            "--",
        ])
        .arg(format!("wss://127.0.0.1:{ws_port}/ws.communication"))
        .arg(&cert)
        .arg("x")
        .output()
        .await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ERR"),
        "an untrusted certificate must fail"
    );

    // https:// producer API with curl.
    let body = json!({"type": "tag.updated", "account_id": "1", "payload": {"id": "t", "name": "n", "color": "c"}});
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg(format!(
            "https://127.0.0.1:{}/v1/events",
            producer.addr.port()
        ))
        .output()
        .await?;
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("\"results\""),
        "https producer: {reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::get(format!(
        "http://127.0.0.1:{}/v1/events",
        producer.addr.port()
    ))
    .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    shutdown.cancel();
    gateway.stopped().await;
    producer.stopped().await;
    Ok(())
}
