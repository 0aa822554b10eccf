//! Partition-affine pod groups (docs/scaling.md) on the real broker: two
//! gateway processes with `--partition-groups 2`, group 0 and group 1, over
//! topics of 4 partitions. Each reads only its partitions and delivers only
//! its accounts' events; a client that reaches the wrong group is
//! redirected (STOMP, ActionCable, TypeID), and at the URL it is sent to it
//! receives its events. `GET /v1/route` names the same group.

use std::time::Duration;

use futures_util::StreamExt;
use herald_gateway::routing::groups::PartitionGroups;
use herald_runtime::{kafka::TopicLayout, partitioner::Partitioner};
use herald_tests::{
    GatewayProcess, Stack, StackOptions, airy_message,
    cable::{CableDriver, RawCable},
    free_port,
    stomp::RawStomp,
    token, typeid, wait_until,
};
use serde_json::{Value, json};

const EVENTS: u64 = 6;
const LONG: Duration = Duration::from_secs(30);

/// The value of `metric{labels}` in a Prometheus text page (0 when absent).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(http: &reqwest::Client, pod: &GatewayProcess) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://{}/metrics", pod.ops_addr))
        .send()
        .await?
        .text()
        .await?)
}

/// Read MESSAGE frames until `count` arrived; returns their message ids.
async fn message_ids(c: &mut RawStomp, count: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let f = c.next_frame().await?;
        anyhow::ensure!(f.command == "MESSAGE", "unexpected frame {}", f.raw);
        let body: Value = serde_json::from_str(&f.body)?;
        ids.push(
            body["payload"]["message"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    Ok(ids)
}

fn expected_ids(account: &str) -> Vec<String> {
    (1..=EVENTS).map(|n| format!("m-{account}-{n}")).collect()
}

/// Publish `EVENTS` events of each group's account through the producer,
/// checking that the producer's partition is in the account's group;
/// returns how many went to each group.
async fn publish_to_both(stack: &Stack, accounts: &[String; 2]) -> anyhow::Result<[u64; 2]> {
    let mut published = [0u64; 2];
    for n in 1..=EVENTS {
        for (g, account) in accounts.iter().enumerate() {
            let body = stack.publish(&airy_message(account, n)).await?;
            let partition = body["results"][0]["partition"]
                .as_i64()
                .expect("a partition");
            assert_eq!(
                partition % 2,
                g as i64,
                "account {account} was produced to partition {partition}, outside group {g}"
            );
            published[g] += 1;
        }
    }
    Ok(published)
}

/// The shared broker with 4 partitions per topic, and two gateway
/// processes of `--partition-groups 2`: group 0 and group 1.
struct Groups {
    stack: Stack,
    pods: [GatewayProcess; 2],
    /// Each group's base URL.
    urls: Vec<String>,
    /// An account of each group, by the gateway's own mapping (which the
    /// producer's partitions are checked against).
    accounts: [String; 2],
}

async fn two_groups() -> anyhow::Result<Groups> {
    two_groups_with(Partitioner::ConsistentRandom).await
}

/// [`two_groups`] with the producer and both pods on `partitioner`, each
/// group's account one whose group under the other partitioner differs.
async fn two_groups_with(partitioner: Partitioner) -> anyhow::Result<Groups> {
    let flag = ["--partitioner".to_owned(), partitioner.name().to_owned()];
    let stack = Stack::start_with(StackOptions {
        topics: Some(TopicLayout::partitions(4)),
        producer_args: flag.to_vec(),
        ..StackOptions::default()
    })
    .await?;
    let ports = [free_port()?, free_port()?];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    let args = |group: u32| {
        let mut a = stack.gateway_args();
        a.extend([
            "--partition-groups".to_owned(),
            "2".to_owned(),
            "--partition-group".to_owned(),
            group.to_string(),
            "--group-urls".to_owned(),
            urls.join(","),
        ]);
        a.extend(flag.iter().cloned());
        a
    };
    let pods = [
        GatewayProcess::start_on(args(0), ports[0]).await?,
        GatewayProcess::start_on(args(1), ports[1]).await?,
    ];
    let groups = PartitionGroups::with_partitioner(2, 0, urls.clone(), partitioner)
        .map_err(anyhow::Error::msg)?;
    let other = PartitionGroups::with_partitioner(
        2,
        0,
        urls.clone(),
        match partitioner {
            Partitioner::ConsistentRandom => Partitioner::Murmur2Random,
            Partitioner::Murmur2Random => Partitioner::ConsistentRandom,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let account_of = |g: u32| {
        (1..1000)
            .map(|a| a.to_string())
            .find(|a| groups.group_of(a) == g && other.group_of(a) != g)
            .expect("both groups have accounts")
    };
    let accounts = [account_of(0), account_of(1)];
    Ok(Groups {
        stack,
        pods,
        urls,
        accounts,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_deliver_only_their_accounts_and_redirect_the_others() -> anyhow::Result<()> {
    let Groups {
        stack,
        pods,
        urls,
        accounts,
    } = two_groups().await?;
    let http = reqwest::Client::new();
    let message_topic = format!("{}message", stack.prefix);

    // Each pod owns 2 of the 4 partitions of every served topic.
    for pod in &pods {
        let text = metrics(&http, pod).await?;
        let owned = metric(
            &text,
            "herald_owned_partitions",
            &format!("topic=\"{message_topic}\""),
        );
        assert_eq!(owned, 2.0, "{text}");
    }

    // The lookup, on either pod, names the account's group and its URL.
    for pod in &pods {
        for (g, account) in accounts.iter().enumerate() {
            let r: Value = http
                .get(format!("http://{}/v1/route?account={account}", pod.ws_addr))
                .send()
                .await?
                .json()
                .await?;
            assert_eq!(
                r,
                json!({"account": account, "group": g, "groups": 2, "url": urls[g]}),
                "{r}"
            );
        }
        let bad = http
            .get(format!("http://{}/v1/route", pod.ws_addr))
            .send()
            .await?;
        assert_eq!(bad.status(), 400);
    }

    // A client of each account on its own group's pod.
    let mut own = Vec::new();
    for (g, account) in accounts.iter().enumerate() {
        let mut c = RawStomp::connect(
            &pods[g].ws_url("/ws.communication"),
            &token(account, "7", "agent"),
        )
        .await?;
        c.subscribe("e", "/events").await?;
        own.push(c);
    }

    // A STOMP client of group 1's account on group 0's pod: ERROR with the
    // redirect, then the socket closes; it is never registered there.
    let mut wrong = RawStomp::open(&pods[0].ws_url("/ws.communication"), "v12.stomp", None).await?;
    wrong
        .send(&format!(
            "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
            token(&accounts[1], "7", "agent")
        ))
        .await?;
    let f = wrong.next_frame().await?;
    assert_eq!(f.command, "ERROR", "{}", f.raw);
    assert_eq!(f.header("message"), Some("wrong group"), "{}", f.raw);
    assert_eq!(f.header("herald-group"), Some("1"), "{}", f.raw);
    let target = f.header("herald-redirect").unwrap_or_default().to_owned();
    assert_eq!(target, urls[1], "{}", f.raw);
    wrong.expect_close(Duration::from_secs(10)).await?;
    // Following it: connected on group 1's pod.
    let mut followed = RawStomp::connect(
        &format!("{target}/ws.communication"),
        &token(&accounts[1], "8", "agent"),
    )
    .await?;
    followed.subscribe("e", "/events").await?;

    // ActionCable (/stream, NotificationsChannel): group 0's account on
    // group 1's pod gets a reconnecting `disconnect` naming group 0's URL.
    let mut cable = RawCable::open(
        &format!(
            "{}?account_id={}&token={}",
            pods[1].ws_url("/stream"),
            accounts[0],
            token(&accounts[0], "7", "agent")
        ),
        "actioncable-v1-json",
    )
    .await?;
    let first = cable.next().await?;
    assert_eq!(
        first,
        Some(
            json!({"type": "disconnect", "reason": "redirect", "reconnect": true, "url": urls[0]})
        ),
    );
    assert_eq!(
        cable.next().await?,
        None,
        "the socket closes after the redirect"
    );

    // TypeID: group 0's account joining on group 1's pod is closed with
    // code 4307 and group 0's URL as the reason.
    let mut tid = typeid::open(&pods[1].ws_url("/notifications")).await?;
    typeid::send(
        &mut tid,
        typeid::join(&token(&accounts[0], "7", "agent"), 7, "7.0.30"),
    )
    .await?;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(15), tid.next()).await? {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                panic!("no frame expected before the redirect, got {t}")
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 4307);
    assert_eq!(close.reason.as_str(), urls[0]);

    // Events of both accounts, through the producer; its partitions agree
    // with the gateway's mapping.
    let published = publish_to_both(&stack, &accounts).await?;

    // Each client gets exactly its account's events, in order.
    for (g, c) in own.iter_mut().enumerate() {
        assert_eq!(
            message_ids(c, EVENTS as usize).await?,
            expected_ids(&accounts[g])
        );
    }
    assert_eq!(
        message_ids(&mut followed, EVENTS as usize).await?,
        expected_ids(&accounts[1])
    );

    // Each pod read only its partitions: its own account's records, never
    // the other group's, and counted its redirects.
    for (g, pod) in pods.iter().enumerate() {
        let label = format!("topic=\"{message_topic}\"");
        wait_until(
            Duration::from_secs(20),
            "the pod read its records",
            || async {
                metrics(&http, pod).await.is_ok_and(|t| {
                    metric(&t, "herald_records_consumed_total", &label) >= published[g] as f64
                })
            },
        )
        .await?;
        let text = metrics(&http, pod).await?;
        assert_eq!(
            metric(&text, "herald_records_consumed_total", &label),
            published[g] as f64,
            "group {g} read records of the other group's partitions"
        );
        assert_eq!(
            metric(&text, "herald_foreign_partition_records_total", &label),
            0.0
        );
    }
    let m0 = metrics(&http, &pods[0]).await?;
    let m1 = metrics(&http, &pods[1]).await?;
    assert_eq!(
        metric(&m0, "herald_group_redirects_total", "protocol=\"stomp\""),
        1.0
    );
    assert_eq!(
        metric(
            &m1,
            "herald_group_redirects_total",
            "protocol=\"actioncable\""
        ),
        1.0
    );
    assert_eq!(
        metric(&m1, "herald_group_redirects_total", "protocol=\"typeid\""),
        1.0
    );
    stack.stop().await;
    Ok(())
}

/// Producers placing records with the Java client's partitioner
/// (`--partitioner murmur2_random` on the producer and on both pods): the
/// groups follow murmur2, for accounts whose CRC-32 group is the other
/// one, and nothing is read from the wrong group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_murmur2_partitioner_each_group_delivers_its_accounts() -> anyhow::Result<()> {
    let Groups {
        stack,
        pods,
        urls,
        accounts,
    } = two_groups_with(Partitioner::Murmur2Random).await?;
    let http = reqwest::Client::new();
    let message_topic = format!("{}message", stack.prefix);
    // A pod of group 0 left on the default partitioner (CRC-32): every
    // record it reads belongs, by its mapping, to the other group.
    let mut args = stack.gateway_args();
    args.extend(
        [
            "--partition-groups",
            "2",
            "--partition-group",
            "0",
            "--group-urls",
            &urls.join(","),
        ]
        .map(String::from),
    );
    let misconfigured = GatewayProcess::start_on(args, free_port()?).await?;
    let mut own = Vec::new();
    for (g, account) in accounts.iter().enumerate() {
        let r: Value = http
            .get(format!(
                "http://{}/v1/route?account={account}",
                pods[1 - g].ws_addr
            ))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(r["group"], g, "{r}");
        assert_eq!(r["url"], urls[g], "{r}");
        let mut c = RawStomp::connect(
            &pods[g].ws_url("/ws.communication"),
            &token(account, "7", "agent"),
        )
        .await?;
        c.subscribe("e", "/events").await?;
        own.push(c);
    }
    publish_to_both(&stack, &accounts).await?;
    for (g, c) in own.iter_mut().enumerate() {
        assert_eq!(
            message_ids(c, EVENTS as usize).await?,
            expected_ids(&accounts[g])
        );
    }
    let label = format!("topic=\"{message_topic}\"");
    for pod in &pods {
        wait_until(
            Duration::from_secs(20),
            "the pod read its records",
            || async {
                metrics(&http, pod).await.is_ok_and(|t| {
                    metric(&t, "herald_records_consumed_total", &label) >= EVENTS as f64
                })
            },
        )
        .await?;
        let text = metrics(&http, pod).await?;
        assert_eq!(
            metric(&text, "herald_records_consumed_total", &label),
            EVENTS as f64
        );
        assert_eq!(
            metric(&text, "herald_foreign_partition_records_total", &label),
            0.0
        );
    }
    // The misconfigured pod delivered none of them and counted each.
    wait_until(
        Duration::from_secs(20),
        "the misconfigured pod counted the foreign records",
        || async {
            metrics(&http, &misconfigured).await.is_ok_and(|t| {
                metric(&t, "herald_foreign_partition_records_total", &label) >= EVENTS as f64
            })
        },
    )
    .await?;
    let text = metrics(&http, &misconfigured).await?;
    assert_eq!(
        metric(&text, "herald_foreign_partition_records_total", &label),
        EVENTS as f64,
        "{text}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rails_client_redirected_reconnects_to_its_group_and_receives() -> anyhow::Result<()> {
    let Groups {
        stack,
        pods,
        urls,
        accounts,
    } = two_groups().await?;
    let http = reqwest::Client::new();
    let account = &accounts[0];
    let tok = token(account, "7", "agent");
    // @rails/actioncable on group 1's pod, RoomChannel for group 0's account.
    let mut d = CableDriver::start("rails").await?;
    d.cmd(json!({"op": "connect", "url": pods[1].ws_url("/cable")}))
        .await?;
    d.cmd(json!({"op": "subscribe", "key": "r", "params": {"channel": "RoomChannel", "pubsub_token": tok, "account_id": account, "user_id": 7}}))
        .await?;
    // The redirect is a `disconnect` the client reconnects after.
    let (ev, before) = d
        .wait_for(LONG, |e| e["key"] == "r" && e["ev"] == "disconnected")
        .await?;
    assert_eq!(ev["willAttemptReconnect"], true, "{ev}");
    assert!(
        !before.iter().any(|e| e["ev"] == "connected"),
        "the wrong group confirmed the subscription: {before:?}"
    );
    // The application's URL function asks the lookup (on the pod it was
    // on): the next reconnect goes to group 0.
    let route: Value = http
        .get(format!(
            "http://{}/v1/route?account={account}",
            pods[1].ws_addr
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(route["url"], urls[0], "{route}");
    let url = format!("{}/cable", route["url"].as_str().unwrap_or_default());
    d.cmd(json!({"op": "seturl", "url": url})).await?;
    d.wait_for(LONG, |e| e["key"] == "r" && e["ev"] == "connected")
        .await?;
    stack.publish(&airy_message(account, 1)).await?;
    let (ev, _) = d
        .wait_for(LONG, |e| e["key"] == "r" && e["ev"] == "received")
        .await?;
    assert!(
        ev["data"].to_string().contains(&format!("m-{account}-1")),
        "{ev}"
    );
    let m1 = metrics(&http, &pods[1]).await?;
    assert!(
        metric(
            &m1,
            "herald_group_redirects_total",
            "protocol=\"actioncable\""
        ) >= 1.0,
        "{m1}"
    );
    d.stop().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_count_that_does_not_divide_the_partitions_is_not_ready() -> anyhow::Result<()> {
    // 2 partitions per topic; 4 groups cannot split them.
    let stack = Stack::start().await?;
    let mut args = stack.gateway_args();
    args.extend(
        [
            "--partition-groups",
            "4",
            "--partition-group",
            "1",
            "--group-url-template",
            "ws://127.0.0.1/g/{group}",
        ]
        .map(String::from),
    );
    let mut config = herald_gateway::app::config::GatewayConfig::from_args(
        std::iter::once("herald-gateway".to_owned()).chain(args),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.listen = "127.0.0.1:0".parse()?;
    config.ops_listen = "127.0.0.1:0".parse()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let gateway = herald_gateway::start(config, stop.clone()).await?;
    let http = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", gateway.ops_addr);
    // Once it has seen the topics it says why it is not ready: the
    // `partition-groups` condition fails (and the assignment is incomplete).
    let body = herald_tests::retry(Duration::from_secs(20), || async {
        let r = http.get(&readyz).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        anyhow::ensure!(
            status == 503 && text.contains("partition-groups"),
            "{status} {text}"
        );
        Ok(text)
    })
    .await?;
    assert!(body.contains("kafka"), "{body}");
    let text = http
        .get(format!("http://{}/metrics", gateway.ops_addr))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        metric(
            &text,
            "herald_owned_partitions",
            &format!("topic=\"{}message\"", stack.prefix)
        ),
        0.0,
        "nothing of an indivisible topic is assigned"
    );
    stop.cancel();
    gateway.stopped().await;
    stack.stop().await;
    Ok(())
}
