//! Partition-affine pod groups (`--partition-groups`, docs/scaling.md): a
//! pod of group `g` of `G` reads only the partitions `p` with
//! `p % G == g` of every served event topic and serves only the accounts
//! whose records land there.
//!
//! An account's partition is what the producers' partitioner
//! (`--partitioner`, [`Partitioner`]: Herald's producer and the gateway's
//! own presence writes use it) gives for the record key, the account id: a
//! hash of the key modulo the topic's partition count. With `G` dividing
//! every topic's partition count, `(hash % P) % G == hash % G`: an
//! account's group is the same in every topic, whatever `P`. The
//! partitioner's unit tests pin the hashes to librdkafka's own functions.

use herald_runtime::partitioner::Partitioner;

/// Which partitions and accounts this pod owns, and where the other
/// groups are. One group (the default) owns everything: today's design.
#[derive(Debug, Clone)]
pub struct PartitionGroups {
    groups: u32,
    group: u32,
    /// Each group's base URL (`ws://`/`wss://`, no endpoint path), indexed
    /// by group; empty when none was configured. Leaked once at startup
    /// (one string per group) so a close frame can carry one as its reason.
    urls: Vec<&'static str>,
    /// How the producers place an account's records.
    partitioner: Partitioner,
}

/// A group's number and base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRoute {
    /// The group owning the account.
    pub group: u32,
    /// Its base URL, when configured.
    pub url: Option<&'static str>,
}

/// The close code of a TypeID redirect (and of the STOMP and ActionCable
/// ones, whose frame carries the URL too); the close reason is the URL.
pub const REDIRECT_CLOSE_CODE: u16 = 4307;

/// Longest URL a redirect can carry: a WebSocket close reason holds 123 bytes.
pub const MAX_URL_BYTES: usize = 123;

impl Default for PartitionGroups {
    fn default() -> Self {
        Self::all()
    }
}

impl PartitionGroups {
    /// One group owning every partition (no redirects).
    pub fn all() -> Self {
        PartitionGroups {
            groups: 1,
            group: 0,
            urls: Vec::new(),
            partitioner: Partitioner::default(),
        }
    }

    /// Group `group` of `groups`, with one base URL per group (or none).
    /// Checked: `groups >= 1`, `group < groups`, one URL per group when
    /// there are several groups, each a `ws://`/`wss://` URL of at most
    /// [`MAX_URL_BYTES`].
    pub fn new(groups: u32, group: u32, urls: Vec<String>) -> Result<Self, String> {
        Self::with_partitioner(groups, group, urls, Partitioner::default())
    }

    /// [`PartitionGroups::new`] for producers that place records with
    /// `partitioner`.
    pub fn with_partitioner(
        groups: u32,
        group: u32,
        urls: Vec<String>,
        partitioner: Partitioner,
    ) -> Result<Self, String> {
        if groups == 0 {
            return Err("--partition-groups must be at least 1".into());
        }
        if group >= groups {
            return Err(format!(
                "--partition-group {group} is out of range: with --partition-groups {groups} it must be 0..={}",
                groups - 1
            ));
        }
        if groups > 1 && urls.len() != groups as usize {
            return Err(format!(
                "--partition-groups {groups} needs every group's URL, for redirects and /v1/route: \
                 set --group-url-template (with {{group}}) or --group-urls ({groups} URLs; got {})",
                urls.len()
            ));
        }
        for u in &urls {
            if !(u.starts_with("ws://") || u.starts_with("wss://")) || u.len() <= "wss://".len() {
                return Err(format!("group URL `{u}` must be a ws:// or wss:// URL"));
            }
            if u.len() > MAX_URL_BYTES || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!(
                    "group URL `{u}` must be at most {MAX_URL_BYTES} bytes without spaces or control \
                     characters (a WebSocket close reason carries it)"
                ));
            }
        }
        Ok(PartitionGroups {
            groups,
            group,
            urls: urls
                .into_iter()
                .map(|u| &*Box::leak(u.into_boxed_str()))
                .collect(),
            partitioner,
        })
    }

    /// Number of groups.
    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// This pod's group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Whether there is more than one group.
    pub fn partitioned(&self) -> bool {
        self.groups > 1
    }

    /// Whether this pod reads `partition`.
    pub fn owns_partition(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.groups == self.group)
    }

    /// The group of `account`: the partitioner's `hash(account) % G`,
    /// which equals the producer's partition modulo `G` in every topic
    /// whose partition count `G` divides. An empty account (the producer
    /// would spread it at random) belongs to group 0.
    pub fn group_of(&self, account: &str) -> u32 {
        self.partitioner
            .partition(account.as_bytes(), self.groups)
            .unwrap_or(0)
    }

    /// Whether `account`'s records are in this pod's partitions.
    pub fn owns_account(&self, account: &str) -> bool {
        self.group_of(account) == self.group
    }

    /// The group of `account` and its URL.
    pub fn route(&self, account: &str) -> GroupRoute {
        let group = self.group_of(account);
        GroupRoute {
            group,
            url: self.urls.get(group as usize).copied(),
        }
    }

    /// Where to send a client of `account`, when this pod does not serve it.
    pub fn redirect(&self, account: &str) -> Option<GroupRoute> {
        (!self.owns_account(account)).then(|| self.route(account))
    }

    /// Why a topic of `partitions` partitions cannot be split over the
    /// groups: `G` must divide the partition count, or an account would
    /// belong to different groups in different topics.
    pub fn check_partition_count(&self, topic: &str, partitions: usize) -> Result<(), String> {
        if partitions.is_multiple_of(self.groups as usize) {
            return Ok(());
        }
        Err(format!(
            "topic {topic} has {partitions} partitions, which --partition-groups {} does not divide: \
             give every served topic a multiple of {} partitions (or change the group count)",
            self.groups, self.groups
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Partitioner; 2] = [Partitioner::ConsistentRandom, Partitioner::Murmur2Random];

    /// librdkafka's own partitioner function for `p`, the one Herald's
    /// producers are configured with.
    fn librdkafka_partition(p: Partitioner, key: &str, partitions: i32) -> i32 {
        p.librdkafka_partition(key.as_bytes(), partitions as u32)
            .map_or(-1, |x| x as i32)
    }

    fn accounts() -> impl Iterator<Item = String> {
        (1..=5000u32)
            .map(|i| i.to_string())
            .chain(["acct-α", "0", "00042", "a b", "9999999999999"].map(String::from))
    }

    fn urls(groups: u32) -> Vec<String> {
        (0..groups).map(|i| format!("ws://g{i}")).collect()
    }

    #[test]
    fn an_accounts_group_is_its_partition_modulo_the_groups_in_every_topic() {
        for partitioner in BOTH {
            for groups in [2u32, 3, 4, 8] {
                let g = PartitionGroups::with_partitioner(groups, 0, urls(groups), partitioner)
                    .unwrap();
                for account in accounts() {
                    for partitions in [groups, groups * 2, groups * 6, 48 / groups * groups] {
                        let p = librdkafka_partition(partitioner, &account, partitions as i32);
                        assert_eq!(
                            g.group_of(&account),
                            p as u32 % groups,
                            "{partitioner:?}, {account:?}, {partitions} partitions"
                        );
                        let owner = PartitionGroups::with_partitioner(
                            groups,
                            g.group_of(&account),
                            urls(groups),
                            partitioner,
                        )
                        .unwrap();
                        assert!(owner.owns_account(&account) && owner.owns_partition(p));
                    }
                }
            }
        }
    }

    #[test]
    fn the_partitioners_place_accounts_in_different_groups() {
        let crc = PartitionGroups::new(4, 0, urls(4)).unwrap();
        let murmur =
            PartitionGroups::with_partitioner(4, 0, urls(4), Partitioner::Murmur2Random).unwrap();
        assert_eq!(crc.group_of(""), 0);
        assert_eq!(murmur.group_of(""), 0);
        let differ = accounts()
            .filter(|a| crc.group_of(a) != murmur.group_of(a))
            .count();
        // Independent hashes: about 3 in 4 accounts land elsewhere.
        assert!(differ > 3000, "{differ} of 5005 accounts differ");
    }

    #[test]
    fn one_group_owns_everything_and_never_redirects() {
        let all = PartitionGroups::all();
        assert!(!all.partitioned());
        for account in accounts() {
            assert!(all.owns_account(&account));
            assert_eq!(all.redirect(&account), None);
            assert_eq!(
                all.route(&account),
                GroupRoute {
                    group: 0,
                    url: None
                }
            );
        }
        assert!((0..100).all(|p| all.owns_partition(p)));
        assert!(all.check_partition_count("t", 7).is_ok());
    }

    #[test]
    fn a_pod_owns_its_partitions_and_redirects_the_other_groups_accounts() {
        let urls = vec!["ws://a:1".to_owned(), "wss://b/g/1".to_owned()];
        let g1 = PartitionGroups::new(2, 1, urls).unwrap();
        assert_eq!(
            (0..8).filter(|&p| g1.owns_partition(p)).collect::<Vec<_>>(),
            [1, 3, 5, 7]
        );
        assert!(!g1.owns_partition(-1));
        let (mine, theirs): (Vec<String>, Vec<String>) =
            accounts().partition(|a| g1.owns_account(a));
        assert!(!mine.is_empty() && !theirs.is_empty());
        assert!(mine.iter().all(|a| g1.redirect(a).is_none()));
        for a in &theirs {
            assert_eq!(
                g1.redirect(a),
                Some(GroupRoute {
                    group: 0,
                    url: Some("ws://a:1")
                })
            );
        }
        assert_eq!(g1.route(&mine[0]).url, Some("wss://b/g/1"));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let urls = |n: usize| (0..n).map(|i| format!("ws://h/{i}")).collect::<Vec<_>>();
        let err = PartitionGroups::new(0, 0, vec![]).unwrap_err();
        assert!(err.contains("--partition-groups"), "{err}");
        let err = PartitionGroups::new(2, 2, urls(2)).unwrap_err();
        assert!(err.contains("--partition-group 2"), "{err}");
        let err = PartitionGroups::new(2, 0, vec![]).unwrap_err();
        assert!(err.contains("--group-url-template"), "{err}");
        let err = PartitionGroups::new(3, 0, urls(2)).unwrap_err();
        assert!(err.contains("got 2"), "{err}");
        let err = PartitionGroups::new(2, 0, vec!["http://x".into(), "ws://y".into()]).unwrap_err();
        assert!(err.contains("ws://"), "{err}");
        let long = format!("ws://{}", "x".repeat(MAX_URL_BYTES));
        let err = PartitionGroups::new(2, 0, vec![long, "ws://y".into()]).unwrap_err();
        assert!(err.contains("123"), "{err}");
        let g = PartitionGroups::new(4, 3, urls(4)).unwrap();
        assert!(g.check_partition_count("t", 8).is_ok());
        let err = g.check_partition_count("herald.message", 6).unwrap_err();
        assert!(
            err.contains("herald.message") && err.contains("6 partitions"),
            "{err}"
        );
    }
}
