//! Topic IDs through librdkafka's DescribeTopics, against Apache Kafka: a
//! recreated topic has a new ID, a missing one is reported missing.

use std::time::Duration;

use herald_runtime::{
    KafkaArgs,
    kafka::{TopicLayout, delete_topics, ensure_topics},
    topic_ids::{TopicId, describe},
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_has_a_new_id() -> anyhow::Result<()> {
    let kafka = herald_testkit::Kafka::shared().await?;
    let args = KafkaArgs::for_brokers(&kafka.bootstrap());
    let topic = herald_testkit::unique("ids-");
    let absent = herald_testkit::unique("absent-");
    let layout = TopicLayout::partitions(1);
    herald_testkit::retry(Duration::from_secs(30), || {
        ensure_topics(&args, std::slice::from_ref(&topic), &[], &layout)
    })
    .await?;
    let client: BaseConsumer = args.client_config()?.create()?;
    let ids = |c: &BaseConsumer| {
        describe(
            c.client(),
            &[topic.clone(), absent.clone()],
            Duration::from_secs(10),
        )
    };
    let first = ids(&client)?;
    let Some(TopicId::Id(old)) = first.get(&topic).map(|t| t.id.clone()) else {
        anyhow::bail!("no id for {topic}: {first:?}");
    };
    assert_eq!(first[&topic].partitions, vec![0]);
    assert_eq!(
        first.get(&absent).map(|t| &t.id),
        Some(&TopicId::Missing),
        "{first:?}"
    );
    assert_eq!(
        ids(&client)?.get(&topic).map(|t| t.id.clone()),
        Some(TopicId::Id(old.clone())),
        "stable"
    );

    delete_topics(&args, std::slice::from_ref(&topic)).await?;
    herald_testkit::retry(Duration::from_secs(30), || async {
        ensure_topics(&args, std::slice::from_ref(&topic), &[], &layout).await?;
        match ids(&client)?.get(&topic).map(|t| &t.id) {
            Some(TopicId::Id(new)) if *new != old => Ok(()),
            other => anyhow::bail!("still {other:?}"),
        }
    })
    .await?;
    Ok(())
}
