//! The resume gate: holds a resuming subscription's live events while it
//! replays what it missed (see docs/resume.md).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::core::{event::RoutedEvent, position::TopicPartition};

/// Holds live events while a subscription replays what it missed, and
/// drops live events the client already has: this pod may be behind the pod
/// the client came from, so it can still dispatch events at or below the
/// client's positions.
///
/// Held events are bounded: past the limit the gate drops them (they are
/// in Kafka) and says so ([`Taken::Overflowed`]), and the catch-up reads
/// them again, so a client that reads slower than its account's live
/// traffic is paced, never left with an unbounded list.
pub struct ResumeGate {
    /// Fast path: once open, live events never touch the lock.
    open: AtomicBool,
    has_floors: AtomicBool,
    /// What a resuming gate holds; `None` for a gate that was open from the
    /// start (boxed: every subscription has a gate, few ever resume, and
    /// an idle subscription should not carry the locks).
    resuming: Option<Box<Resuming>>,
}

struct Resuming {
    held: Mutex<Held>,
    /// Per stream, the client's last offset; removed once the stream passes it.
    floors: Mutex<Vec<(TopicPartition, i64)>>,
}

#[derive(Default)]
struct Held {
    /// `None` once the gate is open.
    events: Option<Vec<Arc<RoutedEvent>>>,
    /// Events were dropped since the last [`ResumeGate::rearm`].
    overflowed: bool,
    limit: usize,
}

/// What [`ResumeGate::take_held`] found.
pub enum Taken {
    /// The events held so far, in arrival order (possibly none).
    Events(Vec<Arc<RoutedEvent>>),
    /// Too many arrived: they were dropped and must be read again.
    Overflowed,
}

impl ResumeGate {
    /// A gate that is already open (no resume).
    pub fn open() -> Self {
        ResumeGate {
            open: AtomicBool::new(true),
            has_floors: AtomicBool::new(false),
            resuming: None,
        }
    }

    /// A closed gate: live events are held (at most `limit` at a time)
    /// until it opens; events at or below the client's `positions` are dropped.
    pub fn holding(positions: &[(String, i32, i64)], limit: usize) -> Self {
        let floors: Vec<(TopicPartition, i64)> = positions
            .iter()
            .map(|(t, p, o)| ((Arc::from(t.as_str()), *p), *o))
            .collect();
        ResumeGate {
            open: AtomicBool::new(false),
            has_floors: AtomicBool::new(!floors.is_empty()),
            resuming: Some(Box::new(Resuming {
                held: Mutex::new(Held {
                    events: Some(Vec::new()),
                    overflowed: false,
                    limit: limit.max(1),
                }),
                floors: Mutex::new(floors),
            })),
        }
    }

    /// Whether `event` is one the client already has (at or below its position).
    pub fn already_seen(&self, event: &RoutedEvent) -> bool {
        if !self.has_floors.load(Ordering::Acquire) {
            return false;
        }
        let Some(Ok(mut floors)) = self.resuming.as_ref().map(|r| r.floors.lock()) else {
            return false;
        };
        let Some(i) = floors
            .iter()
            .position(|((t, p), _)| **t == *event.topic && *p == event.partition)
        else {
            return false;
        };
        if event.offset <= floors[i].1 {
            return true;
        }
        // The stream moved past the client's position: no more checks for it.
        floors.swap_remove(i);
        if floors.is_empty() {
            self.has_floors.store(false, Ordering::Release);
        }
        false
    }

    /// Drop the client's positions in `topic` (every partition, or one):
    /// they belong to a log that was reset, and live events of the new one
    /// must not be taken for events the client already has.
    pub fn forget(&self, topic: &str, partition: Option<i32>) {
        if !self.has_floors.load(Ordering::Acquire) {
            return;
        }
        if let Some(Ok(mut floors)) = self.resuming.as_ref().map(|r| r.floors.lock()) {
            floors
                .retain(|((t, p), _)| !(**t == *topic && partition.is_none_or(|want| *p == want)));
            if floors.is_empty() {
                self.has_floors.store(false, Ordering::Release);
            }
        }
    }

    /// Hold `event` if the gate is closed (or drop it, past the limit);
    /// false when it is open.
    pub fn hold(&self, event: &Arc<RoutedEvent>) -> bool {
        if self.open.load(Ordering::Acquire) {
            return false;
        }
        let Some(Ok(mut held)) = self.resuming.as_ref().map(|r| r.held.lock()) else {
            return false;
        };
        let Held {
            events,
            overflowed,
            limit,
        } = &mut *held;
        let Some(list) = events.as_mut() else {
            return false;
        };
        if *overflowed {
            return true;
        }
        if list.len() >= *limit {
            *overflowed = true;
            *list = Vec::new();
            return true;
        }
        list.push(event.clone());
        true
    }

    /// Take what is held so far (the gate keeps holding).
    pub fn take_held(&self) -> Taken {
        let Some(Ok(mut held)) = self.resuming.as_ref().map(|r| r.held.lock()) else {
            return Taken::Events(Vec::new());
        };
        if held.overflowed {
            return Taken::Overflowed;
        }
        Taken::Events(held.events.as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Open the gate if nothing is held (live events then pass straight
    /// through); false when events arrived meanwhile or were dropped.
    pub fn try_open(&self) -> bool {
        let Some(resuming) = &self.resuming else {
            self.open.store(true, Ordering::Release);
            return true;
        };
        let Ok(mut held) = resuming.held.lock() else {
            return true;
        };
        if held.overflowed || held.events.as_ref().is_some_and(|e| !e.is_empty()) {
            return false;
        }
        held.events = None;
        self.open.store(true, Ordering::Release);
        true
    }

    /// Hold again from empty after an overflow (call while no record is
    /// dispatched, see [`Router::exclusive`](crate::routing::router::Router::exclusive)).
    pub fn rearm(&self) {
        if let Some(Ok(mut held)) = self.resuming.as_ref().map(|r| r.held.lock()) {
            held.overflowed = false;
            if let Some(list) = held.events.as_mut() {
                list.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::Envelope;

    fn event(offset: i64, ts: i64) -> Arc<RoutedEvent> {
        let env =
            Envelope::decode(br#"{"id":"e","type":"tag.updated","account_id":"1","payload":{}}"#)
                .unwrap();
        Arc::new(RoutedEvent::new("t".into(), 0, offset, env, Some(ts)))
    }

    #[test]
    fn gate_holds_then_releases_in_order() {
        let g = ResumeGate::holding(&[("t".into(), 0, 1)], 10);
        assert!(g.already_seen(&event(0, 0)));
        assert!(g.already_seen(&event(1, 0)), "the client's own position");
        assert!(g.hold(&event(1, 0)));
        assert!(g.hold(&event(2, 0)));
        assert!(!g.try_open(), "events are held");
        let Taken::Events(held) = g.take_held() else {
            panic!("no overflow")
        };
        let seen: Vec<i64> = held.iter().map(|e| e.offset).collect();
        assert_eq!(seen, vec![1, 2]);
        assert!(g.try_open());
        assert!(!g.already_seen(&event(2, 0)));
        assert!(
            !g.already_seen(&event(1, 0)),
            "floors are dropped once passed"
        );
        assert!(!g.hold(&event(3, 0)));
        assert!(!ResumeGate::open().hold(&event(1, 0)));
    }

    #[test]
    fn an_open_gate_is_small_and_passes_everything() {
        // Every subscription carries one: what only a resume needs is boxed.
        assert!(std::mem::size_of::<ResumeGate>() <= 16);
        let g = ResumeGate::open();
        assert!(!g.already_seen(&event(0, 0)));
        assert!(!g.hold(&event(1, 0)));
        assert!(matches!(g.take_held(), Taken::Events(e) if e.is_empty()));
        assert!(g.try_open());
        g.rearm();
        g.forget("t", None);
        assert!(!g.hold(&event(2, 0)));
    }

    #[test]
    fn held_events_past_the_limit_are_dropped_and_reported() {
        let g = ResumeGate::holding(&[], 2);
        for o in 0..5 {
            assert!(
                g.hold(&event(o, 0)),
                "held or dropped, never delivered live"
            );
        }
        assert!(matches!(g.take_held(), Taken::Overflowed));
        assert!(!g.try_open(), "an overflowed gate stays closed");
        g.rearm();
        assert!(g.hold(&event(9, 0)));
        let Taken::Events(held) = g.take_held() else {
            panic!("rearmed")
        };
        assert_eq!(held.len(), 1);
        assert!(g.try_open());
        assert!(!g.hold(&event(10, 0)), "open: live events pass");
    }
}
