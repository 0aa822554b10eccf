//! The partitioner that places a record by its key (the account id): the
//! one Herald's producers are configured with (`--partitioner`), and the
//! function the gateway uses to know which partition, and so which
//! partition group, holds an account's records.
//!
//! Both are librdkafka's names and functions:
//! - `consistent_random` (librdkafka's default): CRC-32 of the key modulo
//!   the partition count;
//! - `murmur2_random` (the Java client's default partitioner, for topics
//!   that Java or Kafka Streams producers also write): MurmurHash2 with
//!   Kafka's seed, its sign bit cleared, modulo the partition count.
//!
//! An empty key is spread at random by both, so it has no partition.
//! The unit tests pin each to librdkafka's own partitioner function.

/// How a record's partition follows from its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Partitioner {
    /// CRC-32 of the key (librdkafka's default).
    #[default]
    #[value(name = "consistent_random")]
    ConsistentRandom,
    /// MurmurHash2 of the key, as Java producers place records.
    #[value(name = "murmur2_random")]
    Murmur2Random,
}

impl Partitioner {
    /// librdkafka's name for it (the `partitioner` property).
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Murmur2Random => "murmur2_random",
        }
    }

    /// The partitioner whose librdkafka name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Partitioner::ConsistentRandom, Partitioner::Murmur2Random]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// The hash of `key` whose remainder modulo a partition count is the
    /// key's partition; `None` for an empty key (spread at random).
    pub fn hash(self, key: &[u8]) -> Option<u32> {
        if key.is_empty() {
            return None;
        }
        Some(match self {
            Partitioner::ConsistentRandom => crc32fast::hash(key),
            Partitioner::Murmur2Random => murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff,
        })
    }

    /// The partition of `key` among `partitions`; `None` for an empty key
    /// or no partitions.
    pub fn partition(self, key: &[u8], partitions: u32) -> Option<u32> {
        match partitions {
            0 => None,
            n => self.hash(key).map(|h| h % n),
        }
    }
}

impl Partitioner {
    /// The partition librdkafka's own function for this partitioner picks:
    /// the reference [`Partitioner::partition`] is tested against (here and
    /// in the gateway's partition groups). `None` where librdkafka would
    /// pick at random (an empty key) or there are no partitions.
    #[allow(unsafe_code)]
    pub fn librdkafka_partition(self, key: &[u8], partitions: u32) -> Option<u32> {
        let partitions = i32::try_from(partitions).ok().filter(|&n| n > 0)?;
        if key.is_empty() {
            return None;
        }
        let f = match self {
            Partitioner::ConsistentRandom => {
                rdkafka::bindings::rd_kafka_msg_partitioner_consistent_random
            }
            Partitioner::Murmur2Random => {
                rdkafka::bindings::rd_kafka_msg_partitioner_murmur2_random
            }
        };
        // SAFETY: for a non-empty key and a positive count both functions
        // only hash `key` and take the remainder; they touch neither the
        // topic handle nor the opaques.
        let p = unsafe {
            f(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                partitions,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        u32::try_from(p).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn librdkafka(p: Partitioner, key: &str, partitions: i32) -> i32 {
        p.librdkafka_partition(key.as_bytes(), partitions as u32)
            .map_or(-1, |x| x as i32)
    }

    #[test]
    fn each_is_librdkafkas_partitioner() {
        let keys = (1..=5000u32).map(|i| i.to_string()).chain(
            [
                "acct-α",
                "0",
                "00042",
                "a b",
                "9999999999999",
                "abcdefghijk",
            ]
            .map(String::from),
        );
        for key in keys {
            for p in [Partitioner::ConsistentRandom, Partitioner::Murmur2Random] {
                for partitions in [1u32, 2, 3, 4, 6, 8, 12, 48, 100] {
                    assert_eq!(
                        p.partition(key.as_bytes(), partitions).map(|x| x as i32),
                        Some(librdkafka(p, &key, partitions as i32)),
                        "{p:?}, key {key:?}, {partitions} partitions"
                    );
                }
            }
        }
    }

    #[test]
    fn the_hashes_are_the_standard_ones() {
        // CRC-32's check value.
        assert_eq!(
            Partitioner::ConsistentRandom.hash(b"123456789"),
            Some(0xCBF4_3926)
        );
        // The Java client's `Utils.murmur2` of these keys (its unit test),
        // with the sign bit cleared as its partitioner does.
        for (key, java) in [
            ("21", -973_932_308i32),
            ("foobar", -790_332_482),
            ("abc", 479_470_107),
        ] {
            assert_eq!(
                Partitioner::Murmur2Random.hash(key.as_bytes()),
                Some(java as u32 & 0x7fff_ffff),
                "{key}"
            );
        }
        for p in [Partitioner::ConsistentRandom, Partitioner::Murmur2Random] {
            assert_eq!(p.partition(b"", 4), None);
            assert_eq!(p.partition(b"a", 0), None);
            assert_eq!(Partitioner::from_name(p.name()), Some(p));
        }
        assert_eq!(Partitioner::from_name("random"), None);
    }
}
