//! Airy's STOMP destinations and the bodies they carry.
//!
//! `/events` (Airy's events API) carries `{"type","payload","timestamp"}` for the
//! newer event vocabulary; the older queues (Airy's old queue API) carry the bare payload.

use crate::core::event::RoutedEvent;

/// A destination a client may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `/events`: every Airy event, typed.
    Events,
    /// `/queue/message`: message.created / message.updated payloads.
    QueueMessage,
    /// `/queue/unread-count`: unread_count.updated payloads.
    QueueUnreadCount,
    /// `/queue/channel/connected`: channel.connected payloads.
    QueueChannelConnected,
    /// `/queue/channel/disconnected`: channel.disconnected payloads.
    QueueChannelDisconnected,
}

/// Event types delivered on `/events`.
const EVENTS_TYPES: &[&str] = &[
    "message.created",
    "message.updated",
    "metadata.updated",
    "channel.updated",
    "tag.updated",
    "conversation.updated",
    "component.updated",
];

impl Destination {
    /// Every destination, in documentation order.
    pub const ALL: [Destination; 5] = [
        Destination::Events,
        Destination::QueueMessage,
        Destination::QueueUnreadCount,
        Destination::QueueChannelConnected,
        Destination::QueueChannelDisconnected,
    ];

    /// Parse a SUBSCRIBE `destination` header.
    pub fn parse(s: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The destination's path.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Events => "/events",
            Destination::QueueMessage => "/queue/message",
            Destination::QueueUnreadCount => "/queue/unread-count",
            Destination::QueueChannelConnected => "/queue/channel/connected",
            Destination::QueueChannelDisconnected => "/queue/channel/disconnected",
        }
    }

    /// Whether events of `event_type` are delivered here.
    pub fn accepts(self, event_type: &str) -> bool {
        match self {
            Destination::Events => EVENTS_TYPES.contains(&event_type),
            Destination::QueueMessage => {
                matches!(event_type, "message.created" | "message.updated")
            }
            Destination::QueueUnreadCount => event_type == "unread_count.updated",
            Destination::QueueChannelConnected => event_type == "channel.connected",
            Destination::QueueChannelDisconnected => event_type == "channel.disconnected",
        }
    }

    /// Cache key of this destination's body for one event.
    pub fn body_key(self) -> &'static str {
        match self {
            Destination::Events => "stomp-body:events",
            _ => "stomp-body:queue",
        }
    }

    /// Render the JSON body this destination carries for `event`.
    pub fn body(self, event: &RoutedEvent) -> String {
        let payload = event.envelope.payload.get();
        match self {
            Destination::Events => {
                let ty = serde_json::to_string(&event.envelope.event_type)
                    .unwrap_or_else(|_| "\"\"".into());
                format!(
                    "{{\"type\":{ty},\"payload\":{payload},\"timestamp\":{}}}",
                    event.timestamp_ms()
                )
            }
            _ => payload.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_round_trips() {
        for d in Destination::ALL {
            assert_eq!(Destination::parse(d.as_str()), Some(d));
        }
        assert_eq!(Destination::parse("/queue/other"), None);
        assert_eq!(Destination::parse("/events/"), None);
    }

    #[test]
    fn old_queues_route_by_type() {
        assert!(Destination::QueueMessage.accepts("message.updated"));
        assert!(!Destination::QueueMessage.accepts("tag.updated"));
        assert!(Destination::QueueUnreadCount.accepts("unread_count.updated"));
        assert!(Destination::QueueChannelConnected.accepts("channel.connected"));
        assert!(!Destination::QueueChannelConnected.accepts("channel.disconnected"));
        assert!(Destination::Events.accepts("metadata.updated"));
        assert!(!Destination::Events.accepts("added_message"));
    }
}
