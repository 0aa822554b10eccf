//! Abuse limits shared by every endpoint: connections per client IP and per
//! account, the browser `Origin` allow-list, and a per-connection command
//! rate. Each refusal is counted in `herald_limit_rejections_total{limit}`.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use crate::metrics::Metrics;

/// Limit settings.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Open connections allowed per client IP (0: no limit).
    pub connections_per_ip: u32,
    /// Open connections allowed per account (0: no limit).
    pub connections_per_account: u32,
    /// Origins browsers may connect from; empty: any (non-browser clients
    /// send no Origin and are not affected).
    pub allowed_origins: Vec<String>,
    /// ActionCable `message` commands per second per connection (over it: dropped).
    pub commands_per_second: u32,
    /// Subscribe and unsubscribe commands per second per connection, STOMP
    /// and ActionCable (over it: the connection is read no faster).
    pub subscribes_per_second: u32,
    /// An ActionCable socket without an accepted subscription this long is closed.
    pub cable_anonymous_timeout: std::time::Duration,
}

/// Counts of open connections, per key.
struct Counter<K> {
    max: u32,
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq + Clone> Counter<K> {
    fn take(&self, key: &K) -> bool {
        if self.max == 0 {
            return true;
        }
        let Ok(mut counts) = self.counts.lock() else {
            return true;
        };
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, key: &K) {
        if self.max == 0 {
            return;
        }
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

/// The limits of one gateway.
pub struct Limits {
    config: LimitConfig,
    per_ip: Counter<IpAddr>,
    per_account: Counter<Arc<str>>,
    metrics: Metrics,
}

/// A connection slot of an IP; released on drop.
pub struct IpSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.limits.per_ip.release(&self.ip);
    }
}

/// A connection slot of an account; released on drop.
pub struct AccountSlot {
    limits: Arc<Limits>,
    account: Arc<str>,
}

impl AccountSlot {
    /// The account this slot counts against.
    pub fn account(&self) -> &str {
        &self.account
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        self.limits.per_account.release(&self.account);
    }
}

impl Limits {
    /// Limits with `config`, counting refusals in `metrics`.
    pub fn new(config: LimitConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new(Limits {
            per_ip: Counter {
                max: config.connections_per_ip,
                counts: Mutex::new(HashMap::new()),
            },
            per_account: Counter {
                max: config.connections_per_account,
                counts: Mutex::new(HashMap::new()),
            },
            config,
            metrics,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Count a refusal.
    pub fn rejected(&self, limit: &'static str) {
        self.metrics
            .limit_rejections
            .with_label_values(&[limit])
            .inc();
    }

    /// A slot for a new connection from `ip`, or None when it has too many.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.per_ip.take(&ip) {
            Some(IpSlot {
                limits: self.clone(),
                ip,
            })
        } else {
            self.rejected("connections_per_ip");
            None
        }
    }

    /// A slot for a new connection of `account`, or None when it has too many.
    pub fn admit_account(self: &Arc<Self>, account: &Arc<str>) -> Option<AccountSlot> {
        if self.per_account.take(account) {
            Some(AccountSlot {
                limits: self.clone(),
                account: account.clone(),
            })
        } else {
            self.rejected("connections_per_account");
            None
        }
    }

    /// Whether a browser upgrade from `origin` is allowed.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = match origin {
            None => true,
            Some(_) if self.config.allowed_origins.is_empty() => true,
            Some(o) => self
                .config
                .allowed_origins
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
        };
        if !allowed {
            self.rejected("origin");
        }
        allowed
    }
}

/// A token bucket for one connection's commands.
pub struct CommandRate {
    rate: f64,
    tokens: f64,
    // tokio's clock, so tests can pause it.
    last: tokio::time::Instant,
}

impl CommandRate {
    /// `per_second` commands per second, with a burst of the same size (0: unlimited).
    pub fn new(per_second: u32) -> Self {
        CommandRate {
            rate: f64::from(per_second),
            tokens: f64::from(per_second),
            last: tokio::time::Instant::now(),
        }
    }

    /// Whether a token is there now (refilled, not spent).
    pub fn ready(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        self.tokens >= 1.0
    }

    /// Spend a token [`ready`](Self::ready) found.
    pub fn spend(&mut self) {
        if self.rate > 0.0 {
            self.tokens -= 1.0;
        }
    }

    /// How long until the next token.
    pub fn until_next(&self) -> std::time::Duration {
        if self.rate == 0.0 {
            return std::time::Duration::ZERO;
        }
        let missing = (1.0 - self.tokens).max(0.0) / self.rate;
        std::time::Duration::from_secs_f64(missing.max(0.001))
    }

    /// Wait until a token is there, then spend it: the caller (a session's
    /// read loop) reads nothing more from its client meanwhile.
    pub async fn wait(&mut self) {
        while !self.ready() {
            tokio::time::sleep(self.until_next()).await;
        }
        self.spend();
    }

    /// Spend one token; false when the client is over its rate.
    pub fn allow(&mut self) -> bool {
        if self.ready() {
            self.spend();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ip: u32, account: u32, origins: &[&str]) -> Arc<Limits> {
        Limits::new(
            LimitConfig {
                connections_per_ip: ip,
                connections_per_account: account,
                allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
                commands_per_second: 0,
                subscribes_per_second: 0,
                cable_anonymous_timeout: std::time::Duration::from_secs(30),
            },
            Metrics::new(),
        )
    }

    #[test]
    fn slots_are_counted_and_released() {
        let l = limits(2, 1, &[]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit_ip(ip).unwrap();
        let _b = l.admit_ip(ip).unwrap();
        assert!(l.admit_ip(ip).is_none());
        assert!(
            l.admit_ip("127.0.0.2".parse().unwrap()).is_some(),
            "other IPs unaffected"
        );
        drop(a);
        assert!(l.admit_ip(ip).is_some());
        let acct: Arc<str> = "1".into();
        let s = l.admit_account(&acct).unwrap();
        assert!(l.admit_account(&acct).is_none());
        drop(s);
        assert!(l.admit_account(&acct).is_some());
        assert!(
            limits(0, 0, &[]).admit_ip(ip).is_some(),
            "0 means unlimited"
        );
    }

    #[test]
    fn origins() {
        let l = limits(0, 0, &["https://app.example.com"]);
        assert!(l.origin_allowed(None));
        assert!(l.origin_allowed(Some("https://app.example.com")));
        assert!(!l.origin_allowed(Some("https://evil.example")));
        assert!(limits(0, 0, &[]).origin_allowed(Some("https://anything")));
    }

    #[test]
    fn command_rate() {
        let mut r = CommandRate::new(3);
        assert!((0..3).all(|_| r.allow()));
        assert!(!r.allow());
        assert!(CommandRate::new(0).allow());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_spends_a_token_once_it_is_there() {
        let mut r = CommandRate::new(10);
        for _ in 0..10 {
            assert!(r.allow());
        }
        assert!(!r.allow());
        let before = tokio::time::Instant::now();
        r.wait().await;
        // The paused clock moved as far as one token takes (10/s: 100 ms).
        let waited = before.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(100)
                && waited < std::time::Duration::from_millis(110),
            "{waited:?}"
        );
        assert!(!r.allow(), "the token waited for was spent");
    }
}
