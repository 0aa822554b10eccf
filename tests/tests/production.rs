//! Production conditions: the shipped nginx configuration in front of two
//! gateway processes (client addresses, per-IP limits, spoofed headers),
//! and the drain sequence a rolling deploy relies on.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use futures_util::StreamExt;
use herald_testkit::{free_port, nginx::Nginx, retry};
use herald_tests::{
    GatewayProcess, Stack,
    cable::RawCable,
    stomp::{OpenError, RawStomp},
    token, typeid,
};
use serde_json::json;

/// `herald_connections{protocol="stomp"}` of a gateway process.
async fn stomp_connections(pod: &GatewayProcess) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://{}/metrics", pod.ops_addr))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("herald_connections{protocol=\"stomp\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Open `n` STOMP clients from `from` through `url`, 64 at a time.
async fn open_many(
    from: IpAddr,
    url: &str,
    n: usize,
    token: &str,
) -> anyhow::Result<Vec<RawStomp>> {
    let mut out = Vec::with_capacity(n);
    let stream = futures_util::stream::iter(0..n)
        .map(|_| RawStomp::connect_from(from, url, &[], token))
        .buffer_unordered(64);
    tokio::pin!(stream);
    while let Some(c) = stream.next().await {
        out.push(c.map_err(|e| anyhow::anyhow!("client from {from}: {e}"))?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_shipped_nginx_limits_key_on_the_real_client() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut args = stack.gateway_args();
    // nginx reaches the gateways from 127.0.0.1; clients come from other
    // loopback addresses, as they would from the internet.
    args.extend(
        [
            "--trusted-proxies",
            "127.0.0.1",
            "--max-connections-per-ip",
            "600",
        ]
        .map(String::from),
    );
    let port_b = free_port()?;
    let a = GatewayProcess::start(args.clone()).await?;
    let b_addr: SocketAddr = format!("127.0.0.1:{port_b}").parse()?;
    let nginx = Nginx::start(&Nginx::shipped_conf(), &[a.ws_addr, b_addr]).await?;
    let url = nginx.url("/ws.communication");
    let t = token("42", "7", "agent");

    // Pod B is not up yet: nginx sends everyone to pod A. 1,500 clients,
    // 500 from each of three addresses: one proxy address to the gateway,
    // but every client counted under its own.
    let mut clients = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        clients.extend(
            open_many(ip(from), &url, 500, &t)
                .await
                .with_context(|| nginx.log())?,
        );
    }
    assert_eq!(clients.len(), 1500);
    assert_eq!(stomp_connections(&a).await?, 1500, "all on pod A");

    // The per-IP limit applies to the real address: 100 more from
    // 127.0.0.2 reach 600, the next is refused through nginx.
    clients.extend(open_many(ip("127.0.0.2"), &url, 100, &t).await?);
    match RawStomp::connect_from(ip("127.0.0.2"), &url, &[], &t).await {
        Err(OpenError::Refused(429)) => {}
        other => anyhow::bail!("601st connection from one client: {:?}", other.map(|_| ())),
    }
    // ... while another client, even one claiming to be the full one in its
    // own X-Forwarded-For (nginx appends the real address), is accepted.
    let spoofed = [("X-Forwarded-For", "127.0.0.2")];
    clients.push(
        RawStomp::connect_from(ip("127.0.0.5"), &url, &spoofed, &t)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    // Straight to the gateway, the header of an untrusted peer is ignored:
    // claiming a fresh address does not lift the limit of the real one...
    let direct = a.ws_url("/ws.communication");
    let fresh = [("X-Forwarded-For", "127.0.0.99")];
    match RawStomp::connect_from(ip("127.0.0.2"), &direct, &fresh, &t).await {
        Err(OpenError::Refused(429)) => {}
        other => anyhow::bail!(
            "spoofed header from an untrusted peer: {:?}",
            other.map(|_| ())
        ),
    }
    // ...and claiming the full address does not take another client's slot.
    clients.push(
        RawStomp::connect_from(ip("127.0.0.6"), &direct, &spoofed, &t)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    assert_eq!(stomp_connections(&a).await?, 1602);

    // Events reach clients behind the proxy.
    clients[0].subscribe("s", "/events").await?;
    stack
        .publish(&json!({"type": "tag.updated", "account_id": "42", "payload": {"id": "t5", "name": "vip", "color": "tag-red"}}))
        .await?;
    let f = clients[0].next_frame().await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);

    // Pod B comes up on its address: nginx (least_conn) sends it new
    // clients once it retries it (after `fail_timeout`, 10 s by default).
    let b = GatewayProcess::start_on(args, port_b).await?;
    let mut on_b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stomp_connections(&b).await? == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nginx never sent a client to pod B: {}",
            nginx.log()
        );
        let c = RawStomp::connect_from(ip("127.0.0.7"), &url, &[], &t)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        on_b.push(c);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(clients);
    drop(on_b);
    drop((a, b, nginx));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_first_turns_readyz_503_while_serving_then_every_protocol_is_told_to_reconnect()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut args = stack.gateway_args();
    let delay = args
        .iter()
        .position(|a| a == "--drain-delay-secs")
        .context("flag")?;
    args[delay + 1] = "3".into();
    let mut pod = GatewayProcess::start(args).await?;
    let t = token("42", "7", "agent");
    let mut stomp = RawStomp::connect(&pod.ws_url("/ws.communication"), &t).await?;
    let mut cable = RawCable::open(&pod.ws_url("/cable"), "actioncable-v1-json").await?;
    cable.expect_welcome().await?;
    let mut tid = typeid::joined(&pod.ws_url("/notifications"), &t, 7).await?;

    let http = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", pod.ops_addr);
    assert_eq!(http.get(&readyz).send().await?.status(), 200);
    pod.terminate().await?;
    // First: not ready, with the reason, while the ops port keeps answering.
    let body = retry(Duration::from_secs(10), || async {
        let r = http.get(&readyz).send().await?;
        anyhow::ensure!(r.status() == 503, "still ready");
        Ok(r.text().await?)
    })
    .await?;
    assert!(body.contains("draining"), "{body}");
    // Meanwhile the pod still serves: a new client connects and gets events.
    let mut late = RawStomp::connect(&pod.ws_url("/ws.communication"), &t).await?;
    late.subscribe("s", "/events").await?;
    stack
        .publish(&json!({"type": "tag.updated", "account_id": "42", "payload": {"id": "t6", "name": "late", "color": "tag-red"}}))
        .await?;
    let f = late.next_frame().await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);

    // Then every client is told to reconnect, in its protocol's words.
    for c in [&mut stomp, &mut late] {
        let f = c.next_frame_within(Duration::from_secs(30)).await?;
        assert_eq!(f.command, "ERROR", "{}", f.raw);
        assert!(f.raw.contains("server restart"), "{}", f.raw);
    }
    let d = cable
        .next_within(Duration::from_secs(30))
        .await?
        .context("closed")?;
    assert_eq!(
        d,
        json!({"type": "disconnect", "reason": "server_restart", "reconnect": true})
    );
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), tid.next())
            .await
            .context("no close from the TypeID endpoint")?
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => break c,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("TypeID socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    // And the process ends by itself, cleanly.
    let status = tokio::time::timeout(Duration::from_secs(30), pod.child.wait())
        .await
        .context("the drained gateway did not exit")??;
    assert!(status.success(), "{status}");
    stack.stop().await;
    Ok(())
}
