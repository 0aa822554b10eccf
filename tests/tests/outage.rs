//! Broker outage: the gateway keeps its sockets, reports not-ready, and
//! recovers by itself when the broker is back.

use std::time::{Duration, Instant};

use herald_tests::{Stack, StackOptions, stomp::RawStomp, token};
use serde_json::json;

async fn wait_ready(stack: &Stack, want: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.gateway_ready().await != want {
        anyhow::ensure!(Instant::now() < deadline, "/readyz never became {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn tag(id: &str) -> serde_json::Value {
    json!({"type": "tag.updated", "account_id": "1", "payload": {"id": id, "name": "n", "color": "c"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_survives_a_broker_outage_and_recovers_alone() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(StackOptions {
        own_kafka: Some(Default::default()),
        ..Default::default()
    })
    .await?;
    let mut c = RawStomp::connect(
        &stack.ws_url("/ws.communication"),
        &token("1", "7", "agent"),
    )
    .await?;
    c.subscribe("s", "/events").await?;
    stack.produce(&[tag("before")]).await?;
    assert!(c.next_frame().await?.body.contains("before"));

    stack.broker.kill().await?;
    wait_ready(&stack, false).await?;
    // The client's socket is still served while Kafka is away.
    c.send("SUBSCRIBE\nid:q\ndestination:/queue/message\nreceipt:alive\n\n\0")
        .await?;
    let f = c.next_frame().await?;
    assert_eq!(
        (f.command.as_str(), f.header("receipt-id")),
        ("RECEIPT", Some("alive"))
    );

    stack.broker.restart().await?;
    wait_ready(&stack, true).await?;
    // Nothing to do by hand: events flow to the same socket again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no event after the broker came back"
        );
        stack.produce(&[tag("after")]).await?;
        if let Ok(f) = c.next_frame_within(Duration::from_secs(3)).await {
            assert!(f.body.contains("after"), "{}", f.raw);
            break;
        }
    }
    stack.stop().await;
    Ok(())
}
