//! Positions in the log: streams (topic-partitions), their epochs, and what
//! a client asks to resume from. Plain values, shared by the router, the
//! resume machinery and the codecs.

use std::{collections::HashMap, sync::Arc};

/// A topic-partition.
pub type TopicPartition = (Arc<str>, i32);

/// The AnyCable `epoch` of each stream: the configured `--resume-epoch`
/// joined with the topic's Kafka ID once it is known, so a position in a
/// topic that was deleted and recreated (a new ID) is never taken for a
/// position in the new one. Positions carrying the bare configured epoch
/// (clients of a gateway that did not know the IDs) are still accepted.
#[derive(Debug)]
pub struct Epochs {
    base: Arc<str>,
    per_topic: std::sync::RwLock<HashMap<String, Arc<str>>>,
}

impl Epochs {
    /// Epochs derived from the configured one.
    pub fn new(base: &str) -> Self {
        Epochs {
            base: Arc::from(base),
            per_topic: std::sync::RwLock::new(HashMap::new()),
        }
    }

    /// The topic's Kafka ID is `id` (changes when it is recreated).
    pub fn set_topic_id(&self, topic: &str, id: &str) {
        let epoch: Arc<str> = Arc::from(format!("{}.{id}", self.base));
        if let Ok(mut m) = self.per_topic.write()
            && m.get(topic).is_none_or(|e| *e != epoch)
        {
            m.insert(topic.to_owned(), epoch);
        }
    }

    /// The epoch of `topic`'s streams.
    pub fn of(&self, topic: &str) -> Arc<str> {
        self.per_topic
            .read()
            .ok()
            .and_then(|m| m.get(topic).cloned())
            .unwrap_or_else(|| self.base.clone())
    }

    /// Whether a client's `epoch` for a stream of `topic` is this log's.
    pub fn accepts(&self, topic: &str, epoch: &str) -> bool {
        epoch == &*self.of(topic) || epoch == &*self.base
    }
}

/// What a client asked to resume from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeRequest {
    /// Last delivered offset per stream.
    pub positions: Vec<(String, i32, i64)>,
    /// For streams without a position: events at or after this time (ms).
    pub since_ms: Option<i64>,
}

impl ResumeRequest {
    /// Parse a STOMP `x-stream-offset` value: comma-separated
    /// `topic:partition:offset` (the `message-id`s last received) and/or
    /// `timestamp=<ms>`.
    pub fn parse_stomp(value: &str) -> Result<ResumeRequest, String> {
        let mut req = ResumeRequest::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(ts) = item.strip_prefix("timestamp=") {
                let ms: i64 = ts.parse().map_err(|_| format!("bad timestamp `{ts}`"))?;
                req.since_ms = Some(ms.max(0));
                continue;
            }
            let mut parts = item.rsplitn(3, ':');
            let (Some(offset), Some(partition), Some(topic)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "bad position `{item}` (expected topic:partition:offset)"
                ));
            };
            let offset = offset
                .parse()
                .map_err(|_| format!("bad offset in `{item}`"))?;
            let partition = partition
                .parse()
                .map_err(|_| format!("bad partition in `{item}`"))?;
            req.positions.push((topic.to_owned(), partition, offset));
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_follow_topic_ids() {
        let e = Epochs::new("herald");
        assert_eq!(&*e.of("t"), "herald");
        e.set_topic_id("t", "ID1");
        assert_eq!(&*e.of("t"), "herald.ID1");
        assert!(e.accepts("t", "herald.ID1"));
        assert!(
            e.accepts("t", "herald"),
            "positions from before IDs were known"
        );
        e.set_topic_id("t", "ID2");
        assert!(!e.accepts("t", "herald.ID1"), "the old incarnation");
        assert!(!e.accepts("t", "other"));
    }

    #[test]
    fn stomp_resume_header() {
        let r = ResumeRequest::parse_stomp(
            "herald.message:2:41, herald.tag:0:7,timestamp=1700000000000",
        )
        .unwrap();
        assert_eq!(
            r.positions,
            vec![
                ("herald.message".into(), 2, 41),
                ("herald.tag".into(), 0, 7)
            ]
        );
        assert_eq!(r.since_ms, Some(1_700_000_000_000));
        assert!(ResumeRequest::parse_stomp("nope").is_err());
        assert!(ResumeRequest::parse_stomp("a:b:c").is_err());
        assert!(ResumeRequest::parse_stomp("timestamp=x").is_err());
    }
}
