//! The per-pod history buffer: the recent records of every partition, so a
//! client that reconnects within the buffer's reach is resumed without
//! reading Kafka (see docs/resume.md).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::core::{clock::now_ms, event::RoutedEvent, position::TopicPartition};

/// One record of the history buffer: the event when it was decoded, or only
/// its account when the pod skipped it (nobody here could receive it).
struct Buffered {
    offset: i64,
    timestamp_ms: Option<i64>,
    account: Arc<str>,
    event: Option<Arc<RoutedEvent>>,
}

/// The recent records of each partition, bounded by count and age per
/// partition and by bytes over all of them.
#[derive(Default)]
pub struct HistoryBuffer {
    parts: Mutex<Parts>,
    max_events: usize,
    max_age_ms: i64,
    max_bytes: usize,
}

#[derive(Default)]
struct Parts {
    queues: HashMap<TopicPartition, VecDeque<Buffered>>,
    /// Estimated memory of every buffered record.
    bytes: usize,
    /// Per partition, the newest record timestamp the buffer may lack: every
    /// record stamped later passed through it and is still there. Absent:
    /// unknown (a time lookup must ask Kafka).
    covered_after: HashMap<TopicPartition, i64>,
    /// What Kafka answered for a time in a partition the buffer did not
    /// cover (`offsets_for_times`), kept so a storm of clients resuming by
    /// the same `since` (AnyCable sends whole seconds) asks Kafka once.
    kafka_times: HashMap<(TopicPartition, i64), KafkaTime>,
    /// Incremented by every [`HistoryBuffer::clear`]: a read-back that began
    /// before belongs to another incarnation of the log.
    generation: u64,
}

/// Kafka's answer for a time in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KafkaTime {
    /// The first record at or after the time (offsets never move).
    At(i64),
    /// No record at or after the time below this offset (the asking
    /// subscription's frontier, at most the partition's end when Kafka was
    /// asked): later records come through this pod and its buffer.
    NoneBefore(i64),
}

/// Time answers kept at most (a few per `since` second and partition).
const KAFKA_TIMES_KEPT: usize = 16_384;

/// Where a time lands in a partition, as far as the buffer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtTime {
    /// The first record at or after the time.
    Offset(i64),
    /// No record at or after the time: nothing to replay.
    Nothing,
    /// The buffer does not reach back that far: ask Kafka.
    Unknown,
}

impl Buffered {
    /// What keeping this record costs, estimated: the decoded event's text
    /// (shared with recipients while it is delivered) plus bookkeeping.
    fn cost(&self) -> usize {
        let event = self.event.as_ref().map_or(0, |e| {
            e.envelope.payload.get().len()
                + e.envelope.id.len()
                + e.envelope.event_type.len()
                + e.envelope.account_id.len()
                + 256
        });
        event + self.account.len() + 64
    }
}

impl HistoryBuffer {
    /// A buffer keeping `max_events` per partition, none older than `max_age`.
    pub fn new(max_events: usize, max_age: Duration) -> Self {
        Self::with_budget(max_events, max_age, usize::MAX)
    }

    /// [`new`](Self::new), and at most `max_bytes` over all partitions
    /// (the oldest records of the partition being appended to go first).
    pub fn with_budget(max_events: usize, max_age: Duration, max_bytes: usize) -> Self {
        HistoryBuffer {
            parts: Mutex::new(Parts::default()),
            max_events,
            max_age_ms: max_age.as_millis() as i64,
            max_bytes,
        }
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.parts.lock().map(|p| p.bytes).unwrap_or(0)
    }

    /// Append a dispatched event (records of a partition arrive in offset order).
    pub fn append(&self, event: &Arc<RoutedEvent>) {
        self.push(
            (event.topic.clone(), event.partition),
            Buffered {
                offset: event.offset,
                timestamp_ms: event.kafka_timestamp_ms,
                account: Arc::from(event.envelope.account_id.as_str()),
                event: Some(event.clone()),
            },
        );
    }

    /// Note a record this pod did not decode (its account had nobody here).
    pub fn append_skipped(
        &self,
        stream: TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
        account: &str,
    ) {
        self.push(
            stream,
            Buffered {
                offset,
                timestamp_ms,
                account: Arc::from(account),
                event: None,
            },
        );
    }

    fn push(&self, stream: TopicPartition, record: Buffered) {
        if self.max_events == 0 {
            return;
        }
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        let Parts {
            queues,
            bytes,
            covered_after,
            ..
        } = &mut *parts;
        *bytes += record.cost();
        let queue = queues.entry(stream.clone()).or_default();
        queue.push_back(record);
        let oldest_allowed = now_ms() - self.max_age_ms;
        while queue.len() > self.max_events
            || queue
                .front()
                .is_some_and(|e| e.timestamp_ms.is_some_and(|t| t < oldest_allowed))
            || (*bytes > self.max_bytes && queue.len() > 1)
        {
            if let Some(old) = queue.pop_front() {
                *bytes = bytes.saturating_sub(old.cost());
                evicted(covered_after, &stream, &old);
            }
        }
        // Still over budget (this partition is down to its newest record):
        // the others give up their oldest.
        if *bytes > self.max_bytes {
            for (key, other) in queues.iter_mut() {
                if *key == stream {
                    continue;
                }
                while *bytes > self.max_bytes
                    && let Some(old) = other.pop_front()
                {
                    *bytes = bytes.saturating_sub(old.cost());
                    evicted(covered_after, key, &old);
                }
                if *bytes <= self.max_bytes {
                    break;
                }
            }
            queues.retain(|_, q| !q.is_empty());
        }
    }

    /// Forget what is buffered for `topic` (every partition, or one): its
    /// offsets went backwards, so the buffered records belong to another
    /// incarnation of the log.
    pub fn clear(&self, topic: &str, partition: Option<i32>) {
        if let Ok(mut parts) = self.parts.lock() {
            let Parts {
                queues,
                bytes,
                covered_after,
                kafka_times,
                generation,
            } = &mut *parts;
            *generation += 1;
            let gone =
                |(t, p): &TopicPartition| **t == *topic && partition.is_none_or(|want| *p == want);
            // What the new log holds is read from its beginning again, but
            // be conservative: time lookups go to Kafka.
            covered_after.retain(|stream, _| !gone(stream));
            kafka_times.retain(|(stream, _), _| !gone(stream));
            queues.retain(|stream, q| {
                let gone = gone(stream);
                if gone {
                    *bytes = bytes.saturating_sub(q.iter().map(Buffered::cost).sum());
                }
                !gone
            });
        }
    }

    /// Records `events` read back from Kafka, the whole of `[_, read_to)`
    /// of `stream` in offset order, extend the buffer backwards when they
    /// join its oldest record (or it holds nothing of the stream yet, as
    /// `read_to` is then where this pod began reading): the next clients
    /// resuming from before this pod's start are served from memory. Only
    /// the newest that fit the count, age and byte budgets are kept.
    pub fn backfill(
        &self,
        stream: &TopicPartition,
        events: &[Arc<RoutedEvent>],
        read_to: i64,
        generation: u64,
    ) {
        if self.max_events == 0 || events.is_empty() {
            return;
        }
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        if parts.generation != generation {
            return;
        }
        let Parts { queues, bytes, .. } = &mut *parts;
        let queue = queues.entry(stream.clone()).or_default();
        let front = queue.front().map_or(read_to, |r| r.offset);
        if read_to < front {
            // A hole between what was read and what the buffer holds.
            return;
        }
        let oldest_allowed = now_ms() - self.max_age_ms;
        for event in events.iter().rev().filter(|e| e.offset < front) {
            let record = Buffered {
                offset: event.offset,
                timestamp_ms: event.kafka_timestamp_ms,
                account: Arc::from(event.envelope.account_id.as_str()),
                event: Some(event.clone()),
            };
            if queue.len() >= self.max_events
                || *bytes + record.cost() > self.max_bytes
                || record.timestamp_ms.is_some_and(|t| t < oldest_allowed)
            {
                break;
            }
            *bytes += record.cost();
            queue.push_front(record);
        }
        if queue.is_empty() {
            queues.remove(stream);
        }
    }

    /// The current incarnation, for [`backfill`](Self::backfill).
    pub fn generation(&self) -> u64 {
        self.parts.lock().map_or(0, |p| p.generation)
    }

    /// The events of `account` in `stream` with offsets in `[from, to)`, if
    /// the buffer holds all of them: it reaches back to `from` and decoded
    /// every record of that account in the range.
    pub fn range(
        &self,
        stream: &TopicPartition,
        from: i64,
        to: i64,
        account: &str,
    ) -> Option<Vec<Arc<RoutedEvent>>> {
        if from >= to {
            return Some(Vec::new());
        }
        let parts = self.parts.lock().ok()?;
        let queue = parts.queues.get(stream)?;
        if queue.front()?.offset > from {
            return None;
        }
        let mut out = Vec::new();
        for record in queue
            .iter()
            .filter(|r| r.offset >= from && r.offset < to && *r.account == *account)
        {
            out.push(record.event.clone()?);
        }
        Some(out)
    }

    /// This pod reads `stream` from here on and every record it reads
    /// passes through the buffer: records it lacks are stamped at most
    /// `after_ms` (the wall time when reading began at the log's end, or
    /// `i64::MIN` when reading from the log's beginning).
    pub fn cover(&self, stream: &TopicPartition, after_ms: i64) {
        if self.max_events == 0 {
            return;
        }
        if let Ok(mut parts) = self.parts.lock() {
            parts
                .covered_after
                .entry(stream.clone())
                .or_insert(after_ms);
        }
    }

    /// Where `since_ms` lands in `stream`, as far as the buffer knows: a
    /// time after everything it may lack is answered from the buffer alone
    /// (even when it holds nothing), so resuming by time (`since`,
    /// `timestamp=`) asks Kafka only for times the pod did not see.
    pub fn offset_at(&self, stream: &TopicPartition, since_ms: i64) -> AtTime {
        let Ok(parts) = self.parts.lock() else {
            return AtTime::Unknown;
        };
        let queue = parts.queues.get(stream);
        let found = || {
            queue
                .and_then(|q| q.iter().find(|e| e.timestamp_ms.unwrap_or(0) >= since_ms))
                .map_or(AtTime::Nothing, |e| AtTime::Offset(e.offset))
        };
        if parts
            .covered_after
            .get(stream)
            .is_some_and(|&after| since_ms > after)
        {
            return found();
        }
        match queue.and_then(|q| q.front()) {
            Some(first) if first.timestamp_ms.unwrap_or(0) <= since_ms => match found() {
                AtTime::Nothing => {
                    AtTime::Offset(queue.and_then(|q| q.back()).map_or(0, |b| b.offset + 1))
                }
                at => at,
            },
            _ => AtTime::Unknown,
        }
    }

    /// [`offset_at`](Self::offset_at), completed with what Kafka answered
    /// before for the same time, for a subscription whose frontier in
    /// `stream` is `end`.
    pub fn offset_at_known(&self, stream: &TopicPartition, since_ms: i64, end: i64) -> AtTime {
        match self.offset_at(stream, since_ms) {
            AtTime::Unknown => {}
            at => return at,
        }
        let Ok(parts) = self.parts.lock() else {
            return AtTime::Unknown;
        };
        match parts.kafka_times.get(&(stream.clone(), since_ms)) {
            Some(KafkaTime::At(offset)) => AtTime::Offset(*offset),
            Some(KafkaTime::NoneBefore(bound)) if end <= *bound => AtTime::Nothing,
            Some(KafkaTime::NoneBefore(bound)) => {
                // Records from `bound` on passed through this pod: the
                // buffer answers if it still holds them all.
                let Some(queue) = parts.queues.get(stream) else {
                    return AtTime::Unknown;
                };
                if queue.front().is_none_or(|first| first.offset > *bound) {
                    return AtTime::Unknown;
                }
                queue
                    .iter()
                    .find(|r| r.offset >= *bound && r.timestamp_ms.unwrap_or(0) >= since_ms)
                    .map_or(AtTime::Nothing, |r| AtTime::Offset(r.offset))
            }
            None => AtTime::Unknown,
        }
    }

    /// Keep Kafka's answer for `since_ms` in `stream` (`None`: no record at
    /// or after it below `end`, the asking subscription's frontier), unless
    /// the log was recreated since the lookup began (`generation`).
    pub(crate) fn remember_kafka_time(
        &self,
        stream: &TopicPartition,
        since_ms: i64,
        found: Option<i64>,
        end: i64,
        generation: u64,
    ) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        if parts.generation != generation {
            return;
        }
        let times = &mut parts.kafka_times;
        if times.len() >= KAFKA_TIMES_KEPT {
            let oldest_allowed = now_ms() - self.max_age_ms;
            times.retain(|(_, since), _| *since >= oldest_allowed);
            if times.len() >= KAFKA_TIMES_KEPT {
                times.clear();
            }
        }
        let answer = match found {
            Some(offset) => KafkaTime::At(offset),
            None => KafkaTime::NoneBefore(end),
        };
        let slot = times.entry((stream.clone(), since_ms)).or_insert(answer);
        // An offset, or a "nothing below" further along, says more.
        match (*slot, answer) {
            (KafkaTime::NoneBefore(_), KafkaTime::At(_)) => *slot = answer,
            (KafkaTime::NoneBefore(old), KafkaTime::NoneBefore(new)) if new > old => *slot = answer,
            _ => {}
        }
    }
}

/// A record left the buffer: what it held may now be missing.
fn evicted(
    covered_after: &mut HashMap<TopicPartition, i64>,
    stream: &TopicPartition,
    old: &Buffered,
) {
    let stamp = old.timestamp_ms.unwrap_or(i64::MAX);
    if let Some(after) = covered_after.get_mut(stream) {
        *after = (*after).max(stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::gate::ResumeGate;
    use herald_schemas::Envelope;

    fn event(offset: i64, ts: i64) -> Arc<RoutedEvent> {
        let env =
            Envelope::decode(br#"{"id":"e","type":"tag.updated","account_id":"1","payload":{}}"#)
                .unwrap();
        Arc::new(RoutedEvent::new("t".into(), 0, offset, env, Some(ts)))
    }

    #[test]
    fn buffer_serves_ranges_it_covers() {
        let b = HistoryBuffer::new(3, Duration::from_secs(3600));
        let now = now_ms();
        for o in 10..15 {
            b.append(&event(o, now));
        }
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 11, 15, "1").is_none(), "offset 11 was evicted");
        let r = b.range(&s, 12, 15, "1").unwrap();
        assert_eq!(
            r.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![12, 13, 14]
        );
        assert_eq!(b.range(&s, 14, 14, "1").unwrap().len(), 0);
        assert!(b.range(&("u".into(), 0), 1, 2, "1").is_none());
        // A record of the account that was skipped undecoded: the buffer cannot serve it.
        b.append_skipped(s.clone(), 15, Some(now), "1");
        b.append_skipped(s.clone(), 16, Some(now), "2");
        assert!(b.range(&s, 14, 17, "1").is_none());
        assert_eq!(
            b.range(&s, 16, 17, "1").unwrap().len(),
            0,
            "other accounts' skips do not matter"
        );
    }

    #[test]
    fn the_buffer_stays_within_its_byte_budget() {
        let one = Buffered {
            offset: 0,
            timestamp_ms: None,
            account: Arc::from("1"),
            event: Some(event(0, 0)),
        }
        .cost();
        let b = HistoryBuffer::with_budget(1000, Duration::from_secs(3600), one * 10);
        let now = now_ms();
        for o in 0..100 {
            b.append(&event(o, now));
        }
        assert!(b.bytes() <= one * 10, "{} > {}", b.bytes(), one * 10);
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 89, 100, "1").is_none(), "the oldest went first");
        assert_eq!(b.range(&s, 90, 100, "1").unwrap().len(), 10);
        // Another partition's records push the first one's out.
        let other = |o| {
            let env = Envelope::decode(
                br#"{"id":"e","type":"tag.updated","account_id":"1","payload":{}}"#,
            )
            .unwrap();
            Arc::new(RoutedEvent::new("u".into(), 0, o, env, Some(now)))
        };
        for o in 0..10 {
            b.append(&other(o));
        }
        assert!(b.bytes() <= one * 10);
        b.clear("u", None);
        b.clear("t", None);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn a_reset_log_forgets_floors_and_history() {
        let b = HistoryBuffer::new(10, Duration::from_secs(3600));
        let now = now_ms();
        for o in 0..3 {
            b.append(&event(o, now));
        }
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 0, 3, "1").is_some());
        b.clear("t", Some(1));
        assert!(b.range(&s, 0, 3, "1").is_some(), "another partition");
        b.clear("t", None);
        assert!(b.range(&s, 0, 3, "1").is_none());

        let g = ResumeGate::holding(&[("t".into(), 0, 5)], 10);
        assert!(g.already_seen(&event(2, 0)));
        g.forget("u", None);
        assert!(g.already_seen(&event(3, 0)), "another topic");
        g.forget("t", Some(0));
        assert!(
            !g.already_seen(&event(4, 0)),
            "the new log's records are new"
        );
    }
}

#[cfg(test)]
mod time_lookup_tests {
    use super::*;
    use herald_schemas::Envelope;

    #[test]
    fn times_the_pod_saw_are_answered_from_the_buffer_alone() {
        let buffer = HistoryBuffer::new(2, Duration::from_secs(3600 * 24 * 365 * 100));
        let stream: TopicPartition = (Arc::from("t"), 0);
        let quiet: TopicPartition = (Arc::from("t"), 1);
        // Nothing known yet: Kafka must be asked.
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Unknown);
        // Reading began at the log's end at t=1000.
        buffer.cover(&stream, 1_000);
        buffer.cover(&quiet, 1_000);
        buffer.append_skipped(stream.clone(), 10, Some(2_000), "a");
        buffer.append_skipped(stream.clone(), 11, Some(3_000), "a");
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Offset(10));
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Offset(11));
        assert_eq!(buffer.offset_at(&stream, 3_500), AtTime::Nothing);
        // Before reading began: only Kafka knows.
        assert_eq!(buffer.offset_at(&stream, 900), AtTime::Unknown);
        // A partition with no record since: nothing to replay, no lookup.
        assert_eq!(buffer.offset_at(&quiet, 1_500), AtTime::Nothing);
        // The oldest record leaves (count bound): times up to its stamp are
        // no longer covered.
        buffer.append_skipped(stream.clone(), 12, Some(4_000), "a");
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Unknown);
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Offset(11));
        // A reset forgets what is covered.
        buffer.clear("t", Some(0));
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Unknown);
        // Read from the log's beginning: everything is covered.
        let full = HistoryBuffer::new(10, Duration::from_secs(3600 * 24 * 365 * 100));
        full.cover(&stream, i64::MIN);
        assert_eq!(full.offset_at(&stream, 0), AtTime::Nothing);
    }

    #[test]
    fn kafka_answers_are_kept_for_the_next_subscriptions() {
        let buffer = HistoryBuffer::new(100, Duration::from_secs(3600 * 24 * 365 * 100));
        let stream: TopicPartition = (Arc::from("t"), 0);
        let other: TopicPartition = (Arc::from("t"), 1);
        buffer.cover(&stream, 5_000);
        buffer.cover(&other, 5_000);
        // 1,000 predates what the pod saw: unknown until Kafka answered.
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
        buffer.remember_kafka_time(&stream, 1_000, Some(3), 7, 0);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Offset(3));
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 9), AtTime::Offset(3));
        // Another time is another question.
        assert_eq!(buffer.offset_at_known(&stream, 1_001, 7), AtTime::Unknown);

        // Kafka had nothing that late below offset 20 (the asker's frontier).
        buffer.remember_kafka_time(&other, 1_000, None, 20, 0);
        assert_eq!(buffer.offset_at_known(&other, 1_000, 20), AtTime::Nothing);
        // A later subscription is further along: records from 20 on passed
        // through the buffer, which answers for them...
        buffer.append_skipped(other.clone(), 20, Some(900), "a");
        buffer.append_skipped(other.clone(), 21, Some(6_000), "a");
        assert_eq!(
            buffer.offset_at_known(&other, 1_000, 22),
            AtTime::Offset(21)
        );
        // (For a subscription whose frontier is 21, that is past its end:
        // nothing to replay.)
        assert_eq!(
            buffer.offset_at_known(&other, 1_000, 21),
            AtTime::Offset(21)
        );
        // ...unless it no longer holds them all.
        let small = HistoryBuffer::new(1, Duration::from_secs(3600 * 24 * 365 * 100));
        small.cover(&other, 5_000);
        small.remember_kafka_time(&other, 1_000, None, 20, 0);
        small.append_skipped(other.clone(), 20, Some(900), "a");
        small.append_skipped(other.clone(), 21, Some(6_000), "a");
        assert_eq!(small.offset_at_known(&other, 1_000, 22), AtTime::Unknown);
        // An offset found later replaces "nothing below".
        small.remember_kafka_time(&other, 1_000, Some(21), 22, 0);
        assert_eq!(small.offset_at_known(&other, 1_000, 22), AtTime::Offset(21));

        // A recreated topic forgets Kafka's answers too, and answers asked
        // before it are not kept.
        buffer.clear("t", None);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
        buffer.remember_kafka_time(&stream, 1_000, Some(3), 7, 0);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
    }

    #[test]
    fn read_backs_that_join_the_buffer_extend_it_backwards() {
        let now = now_ms();
        let event = |offset: i64, account: &str| {
            let env = Envelope::decode(
                format!(
                    r#"{{"id":"e","type":"tag.updated","account_id":"{account}","payload":{{}}}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            Arc::new(RoutedEvent::new("t".into(), 0, offset, env, Some(now)))
        };
        let s: TopicPartition = ("t".into(), 0);
        let b = HistoryBuffer::new(5, Duration::from_secs(3600));
        // The pod began reading at 10; a client needed 6..10 from Kafka.
        b.append(&event(10, "1"));
        let read: Vec<_> = (6..10)
            .map(|o| event(o, if o == 7 { "2" } else { "1" }))
            .collect();
        b.backfill(&s, &read, 10, b.generation());
        let got = b.range(&s, 6, 11, "1").expect("served from memory");
        assert_eq!(
            got.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [6, 8, 9, 10]
        );
        // Full (5 records): an older read keeps nothing more.
        b.backfill(&s, &[event(5, "1")], 6, b.generation());
        assert!(b.range(&s, 5, 11, "1").is_none());
        // A read that does not reach the buffer's front leaves a hole: not kept.
        let c = HistoryBuffer::new(100, Duration::from_secs(3600));
        c.append(&event(10, "1"));
        c.backfill(&s, &[event(7, "1"), event(8, "1")], 9, c.generation());
        assert!(c.range(&s, 7, 11, "1").is_none());
        // A partition the pod holds nothing of yet: the read ends where it began.
        c.backfill(&("t".into(), 1), &[event(3, "1")], 4, c.generation());
        // Read before the log was recreated: not kept.
        let generation = c.generation();
        c.clear("t", None);
        c.backfill(&s, &[event(9, "1")], 10, generation);
        assert!(c.range(&s, 9, 10, "1").is_none());
    }
}
