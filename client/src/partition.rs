//! Which partition a keyed record goes to. Every client must agree on it
//! (the CLI, the benchmarks, and any program producing to the same topic),
//! so lookups by key know where to look.

/// `crc32c(key) % partitions`. A topic always has at least one partition;
/// `partitions == 0` (a malformed answer) is read as one.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_partitions_and_always_land_in_range() {
        // Phase: the value is crc32c mod n (a known vector pins the function).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(partition_for(b"123456789", 10), 0xe306_9283 % 10);
        // Phase: in range for every count, and one partition takes everything.
        for n in 1..=16 {
            for k in 0..100u32 {
                assert!(partition_for(&k.to_le_bytes(), n) < n);
            }
        }
        assert_eq!(partition_for(b"anything", 1), 0);
        assert_eq!(partition_for(b"anything", 0), 0);
        // Phase: 1,000 keys over 4 partitions fill each one roughly evenly.
        let mut counts = [0u32; 4];
        for k in 0..1000u32 {
            counts[partition_for(format!("key-{k}").as_bytes(), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (180..=320).contains(&c)), "{counts:?}");
    }
}
