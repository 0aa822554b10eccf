//! Event families: one Kafka topic per family (docs/events.md).

use std::fmt;

/// A family of events, which is also the topic they are published on
/// (`<prefix><suffix>`, e.g. `herald.message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Messages created or changed (Airy, Chatwoot, Pulse, TypeID).
    Message,
    /// Airy unread counters.
    UnreadCount,
    /// Airy channels (connected, disconnected, updated, components).
    Channel,
    /// Airy metadata of conversations, channels and messages.
    Metadata,
    /// Airy tags.
    Tag,
    /// Conversations (Airy, Chatwoot, Pulse conversations, drafts, folders, ...).
    Conversation,
    /// Contacts (Chatwoot contacts, Pulse contacts and blacklist).
    Contact,
    /// Presence (Chatwoot `presence.update`, TypeID user changes).
    Presence,
    /// Chatwoot notifications.
    Notification,
    /// Pulse account-level operations (settings, subscription, devices, ...).
    Account,
    /// Writes coming from clients (TypeID chat messages, ...), for the backend.
    ClientCommands,
}

impl Family {
    /// Every family, in declaration order.
    pub const ALL: [Family; 11] = [
        Family::Message,
        Family::UnreadCount,
        Family::Channel,
        Family::Metadata,
        Family::Tag,
        Family::Conversation,
        Family::Contact,
        Family::Presence,
        Family::Notification,
        Family::Account,
        Family::ClientCommands,
    ];

    /// The topic suffix (`message`, `unread-count`, `client-commands`, ...).
    #[must_use]
    pub const fn suffix(self) -> &'static str {
        match self {
            Family::Message => "message",
            Family::UnreadCount => "unread-count",
            Family::Channel => "channel",
            Family::Metadata => "metadata",
            Family::Tag => "tag",
            Family::Conversation => "conversation",
            Family::Contact => "contact",
            Family::Presence => "presence",
            Family::Notification => "notification",
            Family::Account => "account",
            Family::ClientCommands => "client-commands",
        }
    }

    /// The family whose [`suffix`](Family::suffix) is `s`.
    #[must_use]
    pub fn from_suffix(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|family| family.suffix() == s)
    }

    /// The topic name: `prefix` followed by the suffix (`"herald."` →
    /// `"herald.message"`).
    #[must_use]
    pub fn topic(self, prefix: &str) -> String {
        let mut topic = String::with_capacity(prefix.len() + self.suffix().len());
        topic.push_str(prefix);
        topic.push_str(self.suffix());
        topic
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_round_trip() {
        for family in Family::ALL {
            assert_eq!(Family::from_suffix(family.suffix()), Some(family));
        }
        assert_eq!(Family::from_suffix("messages"), None);
        assert_eq!(Family::UnreadCount.topic("herald."), "herald.unread-count");
        assert_eq!(Family::ClientCommands.to_string(), "client-commands");
    }
}
