//! The online table: who sent `update_presence` within the window, per
//! account. Every pod builds it from the presence topic (heartbeats carry
//! their Kafka timestamps), so pods agree without any shared store.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::core::{clock::now_ms, identity::PrincipalKind};

#[derive(Default)]
struct AccountPresence {
    users: HashMap<String, i64>,
    contacts: HashMap<String, i64>,
}

/// Ids online and their last heartbeat (ms since the epoch).
pub type Online = Vec<(String, i64)>;

/// Account -> last heartbeat (ms since the epoch) of each user and contact.
pub struct PresenceTable {
    accounts: Mutex<HashMap<String, AccountPresence>>,
    window_ms: i64,
}

impl PresenceTable {
    /// A table where a heartbeat keeps someone online for `window`.
    pub fn new(window: Duration) -> Self {
        PresenceTable {
            accounts: Mutex::new(HashMap::new()),
            window_ms: window.as_millis() as i64,
        }
    }

    /// Record a heartbeat sent at `at_ms` (one already outside the window
    /// is not kept).
    pub fn beat(&self, account: &str, kind: PrincipalKind, id: &str, at_ms: i64) {
        if now_ms().saturating_sub(at_ms) >= self.window_ms {
            return;
        }
        let Ok(mut accounts) = self.accounts.lock() else {
            return;
        };
        let entry = accounts.entry(account.to_owned()).or_default();
        let map = match kind {
            PrincipalKind::User => &mut entry.users,
            PrincipalKind::Contact => &mut entry.contacts,
        };
        let last = map.entry(id.to_owned()).or_insert(at_ms);
        *last = (*last).max(at_ms);
    }

    /// Drop every heartbeat outside the window, and accounts left empty:
    /// the table holds who is online now, whoever asks about it. Returns the
    /// entries kept.
    pub fn prune(&self) -> usize {
        let now = now_ms();
        let Ok(mut accounts) = self.accounts.lock() else {
            return 0;
        };
        let window = self.window_ms;
        accounts.retain(|_, entry| {
            entry.users.retain(|_, t| now - *t < window);
            entry.contacts.retain(|_, t| now - *t < window);
            !entry.users.is_empty() || !entry.contacts.is_empty()
        });
        accounts
            .values()
            .map(|e| e.users.len() + e.contacts.len())
            .sum()
    }

    /// Who of `account` is online, with their last heartbeat (ms since the
    /// epoch): users, then contacts, each sorted by id.
    pub fn online(&self, account: &str) -> (Online, Online) {
        let now = now_ms();
        let window = self.window_ms;
        let Ok(accounts) = self.accounts.lock() else {
            return (Vec::new(), Vec::new());
        };
        let Some(entry) = accounts.get(account) else {
            return (Vec::new(), Vec::new());
        };
        let list = |m: &HashMap<String, i64>| {
            let mut v: Vec<(String, i64)> = m
                .iter()
                .filter(|(_, t)| now - **t < window)
                .map(|(id, t)| (id.clone(), *t))
                .collect();
            v.sort();
            v
        };
        (list(&entry.users), list(&entry.contacts))
    }

    /// Accounts with anyone online and how many (users and contacts), sorted.
    pub fn accounts(&self) -> Vec<(String, usize)> {
        let now = now_ms();
        let window = self.window_ms;
        let Ok(accounts) = self.accounts.lock() else {
            return Vec::new();
        };
        let mut v: Vec<(String, usize)> = accounts
            .iter()
            .map(|(a, e)| {
                let n = e.users.values().chain(e.contacts.values());
                (a.clone(), n.filter(|t| now - **t < window).count())
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }

    /// The `presence.update` data for `account`: users online (and contacts
    /// online when `with_contacts`, i.e. for agents only).
    pub fn snapshot(&self, account: &str, with_contacts: bool) -> String {
        let now = now_ms();
        let mut users: Vec<String> = Vec::new();
        let mut contacts: Vec<String> = Vec::new();
        if let Ok(mut accounts) = self.accounts.lock()
            && let Some(entry) = accounts.get_mut(account)
        {
            let window = self.window_ms;
            entry.users.retain(|_, t| now - *t < window);
            entry.contacts.retain(|_, t| now - *t < window);
            users = entry.users.keys().cloned().collect();
            contacts = entry.contacts.keys().cloned().collect();
        }
        users.sort();
        contacts.sort();
        let statuses = |ids: &[String]| {
            let map: serde_json::Map<String, serde_json::Value> = ids
                .iter()
                .map(|id| (id.clone(), serde_json::Value::from("online")))
                .collect();
            serde_json::Value::Object(map)
        };
        let account_value = account
            .parse::<i64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::from(account));
        let mut data = serde_json::json!({"account_id": account_value, "users": statuses(&users)});
        if with_contacts {
            data["contacts"] = statuses(&contacts);
        }
        data.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_visibility() {
        let t = PresenceTable::new(Duration::from_secs(60));
        let now = now_ms();
        t.beat("1", PrincipalKind::User, "7", now);
        t.beat("1", PrincipalKind::User, "8", now - 61_000);
        t.beat("1", PrincipalKind::Contact, "c9", now);
        t.beat("2", PrincipalKind::User, "99", now);
        let agent: serde_json::Value = serde_json::from_str(&t.snapshot("1", true)).unwrap();
        assert_eq!(
            agent,
            serde_json::json!({"account_id": 1, "users": {"7": "online"}, "contacts": {"c9": "online"}})
        );
        let contact: serde_json::Value = serde_json::from_str(&t.snapshot("1", false)).unwrap();
        assert!(contact.get("contacts").is_none());
        assert_eq!(
            t.snapshot("acct-x", true),
            r#"{"account_id":"acct-x","contacts":{},"users":{}}"#
        );
    }

    #[test]
    fn console_lists_who_is_online_per_account() {
        let t = PresenceTable::new(Duration::from_secs(60));
        let now = now_ms();
        t.beat("1", PrincipalKind::User, "8", now);
        t.beat("1", PrincipalKind::User, "7", now - 1000);
        t.beat("1", PrincipalKind::User, "old", now - 61_000);
        t.beat("1", PrincipalKind::Contact, "c9", now);
        t.beat("2", PrincipalKind::User, "99", now);
        let (users, contacts) = t.online("1");
        assert_eq!(
            users,
            vec![("7".to_owned(), now - 1000), ("8".to_owned(), now)]
        );
        assert_eq!(contacts, vec![("c9".to_owned(), now)]);
        assert_eq!(t.online("nobody"), (vec![], vec![]));
        assert_eq!(t.accounts(), vec![("1".to_owned(), 3), ("2".to_owned(), 1)]);
    }

    #[test]
    fn pruning_keeps_only_who_is_online() {
        let t = PresenceTable::new(Duration::from_millis(50));
        let now = now_ms();
        t.beat("old", PrincipalKind::User, "1", now - 60);
        assert_eq!(t.prune(), 0, "a heartbeat outside the window is not kept");
        t.beat("a", PrincipalKind::User, "1", now);
        t.beat("b", PrincipalKind::Contact, "c", now);
        assert_eq!(t.prune(), 2);
        let t = PresenceTable::new(Duration::from_secs(60));
        t.beat("a", PrincipalKind::User, "1", now - 59_000);
        t.beat("a", PrincipalKind::User, "2", now);
        assert_eq!(t.prune(), 2);
        assert_eq!(t.accounts.lock().unwrap().len(), 1);
    }
}
