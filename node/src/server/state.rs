//! The state machine's data: topics, partitions with their consume queues,
//! key and time indexes, consumer-group offsets and idempotent producers.
//!
//! Everything here is a function of the committed log alone (entry
//! timestamps come from the leader and travel in the log), so every replica
//! that applies the same entries holds the same state. Nothing here reads a
//! clock or the node's configuration.
//!
//! # Consume queue, key and time indexes
//! One of each per partition, kept as files under `sm/index/` (see
//! [`super::index`] for their layouts): the consume queue as RocketMQ's,
//! fixed-size entries, one per record:
//!
//! ```text
//! bytes 0..8    log index of the Raft entry holding the record (u64 LE)
//! bytes 8..12   slot of the record within that entry (u32 LE)
//! bytes 12..16  encoded size of the record (u32 LE)
//! bytes 16..24  record timestamp_ms (u64 LE)
//! bytes 24..28  tag hash (u32 LE): 0 = no tag, else crc32c(tag), 0 mapped to 1
//! ```
//!
//! A fetch with a tag filter compares tag hashes here without reading the
//! log, then confirms the tag on the record. Memory holds only the small
//! state (topics, groups, producers) and each partition's unflushed tail;
//! the page cache holds the rest. A checkpoint ([`StoredState`]) records how
//! far each partition's files are durable; after a restart the files are
//! trusted up to there and the log after the checkpoint is applied again,
//! which appends the rest (so the files are never trusted past the applied
//! index, and whatever a crash left past the checkpoint is overwritten).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft_log::FileSystem;
use serde::{Deserialize, Serialize};

use super::entry::{Command, Decoded, StoredBatch};
pub use super::index::{CQ_ENTRY_BYTES, CqEntry};
use super::index::{Durable, IndexError, PartitionIndex};

/// How many recent batches of each (producer, partition) are remembered to
/// answer retries with their original offsets; a retry of an older batch
/// is refused, since whether it was stored can no longer be told.
pub const PRODUCER_WINDOW: usize = 256;
pub const MAX_PARTITIONS: u32 = 1024;
pub const MAX_NAME_BYTES: usize = 249;

/// Why a request was refused by the state machine (or by the same checks on
/// the leader before proposing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Reject {
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("topic `{topic}` has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("{0}")]
    Invalid(String),
    /// A batch of a known producer whose first sequence is not the next
    /// one it must send (`expected`): a gap, an overlap, or one older than
    /// the window of remembered batches.
    #[error("{message}")]
    OutOfOrderSequence { expected: u64, message: String },
    #[error("offset {offset} is out of range for {topic}/{partition}: retained offsets are {start}..{end}")]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, start: u64, end: u64 },
}

/// Check a topic or group name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.`
/// or `..` (Kafka's rule).
pub fn check_name(what: &str, name: &str) -> Result<(), Reject> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Reject::Invalid(format!("{what} name must be 1 to {MAX_NAME_BYTES} bytes, got {}", name.len())));
    }
    if name == "." || name == ".." {
        return Err(Reject::Invalid(format!("{what} name `{name}` is not allowed")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(Reject::Invalid(format!(
            "{what} name `{name}` contains {c:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

pub fn tag_hash(tag: &[u8]) -> u32 {
    if tag.is_empty() {
        return 0;
    }
    match crc32c::crc32c(tag) {
        0 => 1,
        h => h,
    }
}

/// A consume queue as version-1 checkpoints held it (in memory, whole):
/// read only to turn such a checkpoint into index files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "QueueParts")]
pub struct ConsumeQueue {
    /// Offset of the first entry in `data`.
    base_offset: u64,
    data: Vec<u8>,
}

/// A queue as a checkpoint holds it, checked before it becomes a
/// [`ConsumeQueue`]: whole entries, and offsets that fit a u64 (`end()`
/// overflowed on one that did not; found writing the `consume_queue` fuzz
/// target).
#[derive(Deserialize)]
struct QueueParts {
    base_offset: u64,
    data: Vec<u8>,
}

/// Why a checkpoint's consume queue is refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueDefect {
    #[error("a consume queue of {bytes} bytes splits a {CQ_ENTRY_BYTES}-byte entry")]
    SplitEntry { bytes: usize },
    #[error("a consume queue of {count} entries from offset {base} runs past the last offset")]
    PastLastOffset { count: u64, base: u64 },
}

impl TryFrom<QueueParts> for ConsumeQueue {
    type Error = QueueDefect;

    fn try_from(p: QueueParts) -> Result<Self, QueueDefect> {
        if !p.data.len().is_multiple_of(CQ_ENTRY_BYTES) {
            return Err(QueueDefect::SplitEntry { bytes: p.data.len() });
        }
        let count = (p.data.len() / CQ_ENTRY_BYTES) as u64;
        if p.base_offset.checked_add(count).is_none() {
            return Err(QueueDefect::PastLastOffset { count, base: p.base_offset });
        }
        Ok(Self { base_offset: p.base_offset, data: p.data })
    }
}

impl ConsumeQueue {
    pub fn start(&self) -> u64 {
        self.base_offset
    }

    pub fn end(&self) -> u64 {
        self.base_offset + (self.data.len() / CQ_ENTRY_BYTES) as u64
    }

    pub fn get(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.base_offset || offset >= self.end() {
            return None;
        }
        let at = (offset - self.base_offset) as usize * CQ_ENTRY_BYTES;
        Some(CqEntry::decode(offset, &self.data[at..at + CQ_ENTRY_BYTES]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    /// -1: keep forever.
    pub retention_ms: i64,
    /// Per partition; -1: unlimited.
    pub retention_bytes: i64,
    pub max_message_bytes: u32,
}

/// One partition: its index files and the bytes its retained records hold.
#[derive(Debug)]
pub struct Partition {
    pub cq: PartitionIndex,
    /// Bytes of the retained records (sum of consume-queue sizes).
    pub bytes: u64,
}

impl Partition {
    fn append(
        &mut self,
        log_index: u64,
        slot: u32,
        size: u32,
        timestamp_ms: u64,
        tag: &[u8],
        key: &[u8],
    ) -> Result<u64, IndexError> {
        let key = (!key.is_empty()).then(|| key_hash(key));
        let offset = self.cq.append(log_index, slot, size, timestamp_ms, tag_hash(tag), key)?;
        self.bytes += u64::from(size);
        Ok(offset)
    }

    fn trim(&mut self, start: u64) {
        let start = start.min(self.cq.end());
        if start <= self.cq.start() {
            return;
        }
        for o in self.cq.start()..start {
            if let Some(e) = self.cq.get(o) {
                self.bytes -= u64::from(e.size);
            }
        }
        self.cq.trim(start);
    }
}

pub fn key_hash(key: &[u8]) -> u64 {
    // Two independent CRCs make collisions (confirmed away on read anyway) rare.
    (u64::from(crc32c::crc32c(key)) << 32) | u64::from(crc32c::crc32c_append(0x9e37_79b9, key))
}

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    /// Log index of the entry that created the topic.
    pub incarnation: u64,
    pub config: TopicConfig,
    pub partitions: Vec<Partition>,
}

/// Where partitions keep their index files, and how many offsets one set
/// of files covers.
#[derive(Debug, Clone)]
pub struct IndexRoot {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    entries_per_file: u64,
    /// Tests: the temporary directory, removed with the last clone.
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl IndexRoot {
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, entries_per_file: u64) -> Self {
        Self { fs, dir, entries_per_file, _temp: None }
    }

    /// A root in a fresh temporary directory, on the real file system.
    pub fn temp(entries_per_file: u64) -> Self {
        let temp = tempfile::TempDir::new().expect("create a temporary directory");
        let dir = temp.path().to_path_buf();
        Self { fs: Arc::new(keel_raft_log::RealFs), dir, entries_per_file, _temp: Some(Arc::new(temp)) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/<topic>-<incarnation>`: a topic created again gets new files.
    fn topic_dir(&self, topic: &str, incarnation: u64) -> PathBuf {
        self.dir.join(format!("{topic}-{incarnation}"))
    }

    fn partition_dir(&self, topic: &str, incarnation: u64, partition: usize) -> PathBuf {
        self.topic_dir(topic, incarnation).join(partition.to_string())
    }

    /// A partition over fresh, empty index files whose first offset is
    /// `start`; files already there (a crash left them: the topic was
    /// created after the last checkpoint, or a snapshot install was cut
    /// short) are replaced.
    pub fn create(&self, topic: &str, incarnation: u64, partition: usize, start: u64) -> Result<Partition, IndexError> {
        let dir = self.partition_dir(topic, incarnation, partition);
        remove_dir(&dir)?;
        let cq = PartitionIndex::create(self.fs.clone(), dir, self.entries_per_file, start)?;
        Ok(Partition { cq, bytes: 0 })
    }
}

fn remove_dir(dir: &Path) -> Result<(), IndexError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(IndexError::Io { path: dir.to_path_buf(), op: "remove", source: e })
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RememberedBatch {
    first_sequence: u64,
    count: u32,
    base_offset: u64,
    log_index: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "StoredProducerState")]
struct ProducerState {
    /// Oldest first. Never empty: the state is made with its first batch.
    recent: VecDeque<RememberedBatch>,
    last_seen_ms: u64,
    /// The sequence the producer's next batch must start at: one past the
    /// highest one stored. Derived from `recent`, not stored, so
    /// checkpoints keep their layout (the two fields above); kept here
    /// because every produce request and every apply asks for it.
    #[serde(skip_serializing)]
    next: u64,
}

/// [`ProducerState`] as checkpoints hold it.
#[derive(Deserialize)]
struct StoredProducerState {
    recent: VecDeque<RememberedBatch>,
    last_seen_ms: u64,
}

impl From<StoredProducerState> for ProducerState {
    fn from(s: StoredProducerState) -> Self {
        // A checkpoint from before gaps were refused may hold batches out
        // of order, hence the maximum rather than the last. Since then a
        // batch is stored only at `next`, so the newest is the highest.
        let next = s.recent.iter().map(RememberedBatch::end).max().unwrap_or(0);
        ProducerState { recent: s.recent, last_seen_ms: s.last_seen_ms, next }
    }
}

impl RememberedBatch {
    fn end(&self) -> u64 {
        self.first_sequence.saturating_add(u64::from(self.count))
    }
}

impl ProducerState {
    fn next_sequence(&self) -> u64 {
        self.next
    }

    fn remember(&mut self, batch: RememberedBatch) {
        if self.recent.len() == PRODUCER_WINDOW {
            self.recent.pop_front();
        }
        self.next = self.next.max(batch.end());
        self.recent.push_back(batch);
    }
}

/// Result of one produce batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOutcome {
    Stored { base_offset: u64, count: u32, duplicate: bool, log_index: u64 },
    Rejected(Reject),
}

/// Result of applying one entry (openraft's `C::R`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Blank and membership entries.
    #[default]
    Nothing,
    Batches(Vec<BatchOutcome>),
    Command(Result<(), Reject>),
    /// The payload did not decode (a bug: entries are checked before proposing).
    Malformed(String),
}

#[derive(Debug)]
pub struct State {
    pub topics: BTreeMap<String, Topic>,
    /// (group, topic, partition) → next offset to read.
    pub groups: BTreeMap<(String, String, u32), u64>,
    producers: HashMap<(u64, String, u32), ProducerState>,
    root: IndexRoot,
    /// Index directories of deleted topics: removed once a checkpoint
    /// without the topic is durable (a crash before it must find them).
    graveyard: Vec<PathBuf>,
}

/// The state as a checkpoint holds it: everything but the index files,
/// and how far each partition's files are durable.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoredState {
    pub topics: BTreeMap<String, StoredTopic>,
    groups: BTreeMap<(String, String, u32), u64>,
    producers: HashMap<(u64, String, u32), ProducerState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StoredTopic {
    name: String,
    pub incarnation: u64,
    config: TopicConfig,
    pub partitions: Vec<StoredPartition>,
}

/// Files a checkpoint no longer needs once it is durable.
#[derive(Debug, Default)]
pub struct Retired {
    dirs: Vec<PathBuf>,
    /// (topic, incarnation, partition, start): sets wholly below `start`.
    starts: Vec<(String, u64, usize, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPartition {
    /// The files are complete and durable up to here.
    pub index: Durable,
    pub bytes: u64,
}

impl State {
    pub fn new(root: IndexRoot) -> Self {
        Self { topics: BTreeMap::new(), groups: BTreeMap::new(), producers: HashMap::new(), root, graveyard: vec![] }
    }

    pub fn root(&self) -> &IndexRoot {
        &self.root
    }

    /// Write every partition's unflushed entries and make them durable,
    /// then describe the state as a checkpoint must hold it, with what the
    /// files no longer need once that checkpoint is durable.
    pub fn stored(&mut self) -> Result<(StoredState, Retired), IndexError> {
        let mut topics = BTreeMap::new();
        let mut retired = Retired { dirs: std::mem::take(&mut self.graveyard), starts: Vec::new() };
        for (name, t) in &mut self.topics {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for (i, p) in t.partitions.iter_mut().enumerate() {
                let index = p.cq.flush()?;
                retired.starts.push((name.clone(), t.incarnation, i, index.start));
                partitions.push(StoredPartition { index, bytes: p.bytes });
            }
            topics.insert(
                name.clone(),
                StoredTopic { name: t.name.clone(), incarnation: t.incarnation, config: t.config, partitions },
            );
        }
        Ok((StoredState { topics, groups: self.groups.clone(), producers: self.producers.clone() }, retired))
    }

    /// Once a checkpoint written from [`State::stored`] is durable: remove
    /// the files it no longer needs (sets wholly below the starts it
    /// records, deleted topics). Trims applied since are left for the next
    /// checkpoint: this one still names their files.
    pub fn checkpointed(&mut self, retired: Retired) -> Result<(), IndexError> {
        for (name, incarnation, i, start) in retired.starts {
            if let Some(t) = self.topics.get_mut(&name).filter(|t| t.incarnation == incarnation)
                && let Some(p) = t.partitions.get_mut(i)
            {
                p.cq.purge_below(start)?;
            }
        }
        for dir in retired.dirs {
            remove_dir(&dir)?;
        }
        Ok(())
    }

    /// The state of a checkpoint, over index files trusted up to what it
    /// records. Index directories it does not name (topics deleted, or
    /// created after it: the log replays their creation) are removed.
    pub fn restore(stored: StoredState, root: IndexRoot) -> Result<Self, IndexError> {
        let StoredState { topics, groups, producers } = stored;
        let topics = topics.into_values().map(|t| (t.name, t.incarnation, t.config, t.partitions));
        Self::assemble(root, topics, groups, producers, |root, name, incarnation, i, p: StoredPartition| {
            let dir = root.partition_dir(name, incarnation, i);
            Ok(Partition {
                cq: PartitionIndex::open(root.fs.clone(), dir, root.entries_per_file, p.index)?,
                bytes: p.bytes,
            })
        })
    }

    /// A received snapshot's state: `stored`'s topics over fresh index
    /// files, each partition made by `make` (which appends the shipped
    /// entries to [`IndexRoot::create`]'s partition and counts their bytes).
    pub fn install<E: From<IndexError>>(
        stored: StoredState,
        root: IndexRoot,
        mut make: impl FnMut(&IndexRoot, &str, u64, usize) -> Result<Partition, E>,
    ) -> Result<Self, E> {
        let StoredState { topics, groups, producers } = stored;
        let topics = topics.into_values().map(|t| (t.name, t.incarnation, t.config, t.partitions));
        Self::assemble(root, topics, groups, producers, |root, name, incarnation, i, _| {
            make(root, name, incarnation, i)
        })
    }

    /// A state of `topics` (name, incarnation, config, what each partition
    /// is made from) whose partitions `make` builds; index directories of
    /// any other topic are removed.
    fn assemble<P, E: From<IndexError>>(
        root: IndexRoot,
        topics: impl Iterator<Item = (String, u64, TopicConfig, Vec<P>)>,
        groups: BTreeMap<(String, String, u32), u64>,
        producers: HashMap<(u64, String, u32), ProducerState>,
        mut make: impl FnMut(&IndexRoot, &str, u64, usize, P) -> Result<Partition, E>,
    ) -> Result<Self, E> {
        let mut state = Self::new(root);
        for (name, incarnation, config, parts) in topics {
            let mut partitions = Vec::with_capacity(parts.len());
            for (i, p) in parts.into_iter().enumerate() {
                partitions.push(make(&state.root, &name, incarnation, i, p)?);
            }
            state.topics.insert(name.clone(), Topic { name, incarnation, config, partitions });
        }
        state.groups = groups;
        state.producers = producers;
        state.remove_unnamed()?;
        Ok(state)
    }

    /// Remove the index directories of topics the state does not hold.
    fn remove_unnamed(&self) -> Result<(), IndexError> {
        let keep: std::collections::HashSet<PathBuf> =
            self.topics.values().map(|t| self.root.topic_dir(&t.name, t.incarnation)).collect();
        let dir = &self.root.dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(IndexError::Io { path: dir.clone(), op: "list", source: e }),
        };
        for entry in entries.flatten() {
            if !keep.contains(&entry.path()) {
                tracing::info!(dir = %entry.path().display(), "removing index files no checkpoint names");
                remove_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Apply one entry's payload at `log_index`, stamped `timestamp_ms` by
    /// its leader. An error is a failure of the index files' I/O: the
    /// state machine stops (the entry stays unapplied).
    pub fn apply(&mut self, log_index: u64, timestamp_ms: u64, decoded: Decoded) -> Result<Applied, IndexError> {
        Ok(match decoded {
            Decoded::Produce(batches) => {
                let mut slot = 0u32;
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    let n = u32::try_from(b.records.len()).expect("record count is a u32 on disk");
                    out.push(self.apply_batch(log_index, timestamp_ms, slot, b)?);
                    slot += n;
                }
                Applied::Batches(out)
            }
            Decoded::Command(Command::CreateTopic {
                name,
                partitions,
                retention_ms,
                retention_bytes,
                max_message_bytes,
            }) => {
                let config = TopicConfig { partitions, retention_ms, retention_bytes, max_message_bytes };
                Applied::Command(self.create_topic(log_index, name, config)?)
            }
            Decoded::Command(c) => Applied::Command(self.apply_command(c)),
        })
    }

    fn apply_batch(
        &mut self,
        log_index: u64,
        timestamp_ms: u64,
        first_slot: u32,
        b: StoredBatch,
    ) -> Result<BatchOutcome, IndexError> {
        let topic = match self.topics.get_mut(&b.topic) {
            Some(t) if t.incarnation == b.incarnation => t,
            Some(_) => {
                return Ok(BatchOutcome::Rejected(Reject::UnknownTopic(format!(
                    "{} (deleted and created again while the produce was in flight)",
                    b.topic
                ))));
            }
            None => return Ok(BatchOutcome::Rejected(Reject::UnknownTopic(b.topic))),
        };
        let partitions = topic.config.partitions;
        let Some(partition) = topic.partitions.get_mut(b.partition as usize) else {
            return Ok(BatchOutcome::Rejected(Reject::UnknownPartition {
                topic: b.topic,
                partition: b.partition,
                partitions,
            }));
        };
        let count = u32::try_from(b.records.len()).expect("record count is a u32 on disk");
        let producer_key = (b.producer_id, b.topic.clone(), b.partition);
        if b.producer_id != 0
            && let Some(p) = self.producers.get_mut(&producer_key)
        {
            // A producer id the state does not know (new, or forgotten
            // after producer.id.expiry.ms) starts at any sequence; a known
            // one must go on exactly where it stopped, as in Kafka: a gap
            // means a batch before it was lost, and storing past it would
            // break the producer's order.
            p.last_seen_ms = p.last_seen_ms.max(timestamp_ms);
            let expected = p.next_sequence();
            let who = || format!("producer {} on {}/{}", b.producer_id, b.topic, b.partition);
            // Every remembered batch starts below `expected`: only a resend
            // (rare) searches the window.
            let resent = if b.first_sequence < expected {
                p.recent.iter().find(|r| r.first_sequence == b.first_sequence)
            } else {
                None
            };
            if let Some(r) = resent {
                if r.count == count {
                    return Ok(BatchOutcome::Stored {
                        base_offset: r.base_offset,
                        count,
                        duplicate: true,
                        log_index: r.log_index,
                    });
                }
                return Ok(BatchOutcome::Rejected(Reject::OutOfOrderSequence {
                    expected,
                    message: format!(
                        "{} sent sequence {} with {count} records; it was stored with {} \
                         (expected sequence {expected} next)",
                        who(),
                        b.first_sequence,
                        r.count
                    ),
                }));
            }
            if b.first_sequence != expected {
                let why = if b.first_sequence > expected {
                    format!("sequences {expected}..{} are missing (a gap)", b.first_sequence)
                } else if p.recent.iter().all(|r| b.first_sequence < r.first_sequence) {
                    format!(
                        "it is older than the {} batches remembered (at most {PRODUCER_WINDOW}), so whether it \
                         was stored can no longer be told",
                        p.recent.len()
                    )
                } else {
                    "it overlaps sequences already stored".to_string()
                };
                return Ok(BatchOutcome::Rejected(Reject::OutOfOrderSequence {
                    expected,
                    message: format!(
                        "{} sent sequence {}, but expected sequence {expected}: {why}",
                        who(),
                        b.first_sequence
                    ),
                }));
            }
        }
        let mut base_offset = None;
        for (i, r) in b.records.iter().enumerate() {
            let slot = first_slot + u32::try_from(i).expect("record count is a u32");
            let o = partition.append(log_index, slot, r.encoded_bytes, r.timestamp_ms, &r.tag, &r.key)?;
            base_offset.get_or_insert(o);
        }
        let base_offset = base_offset.expect("batches hold at least one record");
        if b.producer_id != 0 {
            let p = self.producers.entry(producer_key).or_default();
            p.last_seen_ms = p.last_seen_ms.max(timestamp_ms);
            p.remember(RememberedBatch { first_sequence: b.first_sequence, count, base_offset, log_index });
        }
        Ok(BatchOutcome::Stored { base_offset, count, duplicate: false, log_index })
    }

    fn create_topic(
        &mut self,
        log_index: u64,
        name: String,
        config: TopicConfig,
    ) -> Result<Result<(), Reject>, IndexError> {
        if let Err(r) = check_name("topic", &name) {
            return Ok(Err(r));
        }
        if self.topics.contains_key(&name) {
            return Ok(Err(Reject::TopicExists(name)));
        }
        if config.partitions == 0 || config.partitions > MAX_PARTITIONS {
            let got = config.partitions;
            return Ok(Err(Reject::Invalid(format!("partitions must be 1 to {MAX_PARTITIONS}, got {got}"))));
        }
        let partitions = (0..config.partitions as usize)
            .map(|i| self.root.create(&name, log_index, i, 0))
            .collect::<Result<_, _>>()?;
        let topic = Topic { name: name.clone(), incarnation: log_index, config, partitions };
        self.topics.insert(name, topic);
        Ok(Ok(()))
    }

    fn apply_command(&mut self, c: Command) -> Result<(), Reject> {
        match c {
            Command::CreateTopic { name, .. } => {
                unreachable!("apply creates topic {name} itself: it needs the index files")
            }
            Command::DeleteTopic { name } => {
                let Some(t) = self.topics.remove(&name) else {
                    return Err(Reject::UnknownTopic(name));
                };
                self.graveyard.push(self.root.topic_dir(&name, t.incarnation));
                self.groups.retain(|(_, t, _), _| *t != name);
                self.producers.retain(|(_, t, _), _| *t != name);
                Ok(())
            }
            Command::CommitOffset { group, topic, partition, offset } => {
                check_name("group", &group)?;
                let p = self.partition(&topic, partition)?;
                let (start, end) = (p.cq.start(), p.cq.end());
                if offset > end {
                    return Err(Reject::OffsetOutOfRange { topic, partition, offset, start, end });
                }
                self.groups.insert((group, topic, partition), offset);
                Ok(())
            }
            Command::Trim { topic, incarnation, partition, start_offset } => {
                match self.topics.get_mut(&topic) {
                    Some(t) if t.incarnation == incarnation => {
                        if let Some(p) = t.partitions.get_mut(partition as usize) {
                            p.trim(start_offset);
                        }
                    }
                    // The topic went away since retention looked at it: nothing to trim.
                    _ => {}
                }
                Ok(())
            }
            Command::ExpireProducers { idle_before_ms } => {
                self.producers.retain(|_, p| p.last_seen_ms >= idle_before_ms);
                Ok(())
            }
        }
    }

    pub fn topic(&self, name: &str) -> Result<&Topic, Reject> {
        self.topics.get(name).ok_or_else(|| Reject::UnknownTopic(name.to_string()))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<&Partition, Reject> {
        let t = self.topic(topic)?;
        t.partitions.get(partition as usize).ok_or_else(|| Reject::UnknownPartition {
            topic: topic.to_string(),
            partition,
            partitions: t.config.partitions,
        })
    }

    /// Consume-queue entries from `offset` on, until `max_bytes` (at least
    /// one entry if there is one) or `max_records`, keeping those whose tag
    /// hash is in `tags` (all when `tags` is empty). Returns the entries and
    /// the offset the next read starts at.
    pub fn scan(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
        max_records: usize,
        tags: &[u32],
    ) -> Result<(Vec<CqEntry>, u64), Reject> {
        let p = self.partition(topic, partition)?;
        let (start, end) = (p.cq.start(), p.cq.end());
        if offset < start || offset > end {
            return Err(Reject::OffsetOutOfRange { topic: topic.to_string(), partition, offset, start, end });
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut next = offset;
        // Bound the work of a tag scan that matches nothing.
        let scan_limit = offset.saturating_add(100_000).min(end);
        while next < scan_limit && out.len() < max_records {
            let e = p.cq.get(next).expect("offset within the queue");
            if tags.is_empty() || tags.contains(&e.tag_hash) {
                if !out.is_empty() && bytes + u64::from(e.size) > max_bytes {
                    break;
                }
                bytes += u64::from(e.size);
                out.push(e);
            }
            next += 1;
        }
        Ok((out, next))
    }

    /// Offsets whose key hashes like `key`, newest last.
    pub fn key_candidates(&self, topic: &str, partition: u32, key: &[u8]) -> Result<Vec<CqEntry>, Reject> {
        let p = self.partition(topic, partition)?;
        Ok(p.cq.key_candidates(key_hash(key)).into_iter().filter_map(|o| p.cq.get(o)).collect())
    }

    /// The first retained record whose timestamp is ≥ `ts`.
    pub fn offset_for_timestamp(&self, topic: &str, partition: u32, ts: u64) -> Result<Option<CqEntry>, Reject> {
        let p = self.partition(topic, partition)?;
        Ok(p.cq.offset_for_timestamp(ts).and_then(|o| p.cq.get(o)))
    }

    /// The sequence a producer id must send next on a partition, if the
    /// state knows it there (see `apply_batch`).
    pub fn producer_next_sequence(&self, producer_id: u64, topic: &str, partition: u32) -> Option<u64> {
        self.producers.get(&(producer_id, topic.to_string(), partition)).map(ProducerState::next_sequence)
    }

    pub fn group_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.groups.get(&(group.to_string(), topic.to_string(), partition)).copied()
    }
}

/// Version-1 checkpoints held the whole state in memory, consume queues
/// and key and time indexes included. Opening one writes its queues into
/// index files, once; the next checkpoint is of the current version.
pub mod v1 {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::{ConsumeQueue, IndexError, IndexRoot, ProducerState, TopicConfig};

    #[derive(Debug, Deserialize)]
    pub struct State {
        topics: BTreeMap<String, Topic>,
        groups: BTreeMap<(String, String, u32), u64>,
        producers: HashMap<(u64, String, u32), ProducerState>,
    }

    #[derive(Debug, Deserialize)]
    struct Topic {
        name: String,
        incarnation: u64,
        config: TopicConfig,
        partitions: Vec<Partition>,
    }

    #[derive(Debug, Deserialize)]
    struct Partition {
        cq: ConsumeQueue,
        bytes: u64,
        keys: HashMap<u64, Vec<u64>>,
        /// Derived from the queue; the index files keep their own.
        #[allow(dead_code)]
        time: Vec<(u64, u64)>,
    }

    impl State {
        pub fn into_current(self, root: IndexRoot) -> Result<super::State, IndexError> {
            let topics = self.topics.into_values().map(|t| (t.name, t.incarnation, t.config, t.partitions));
            super::State::assemble(root, topics, self.groups, self.producers, |root, name, incarnation, i, old| {
                let key_of: HashMap<u64, u64> =
                    old.keys.iter().flat_map(|(&hash, offsets)| offsets.iter().map(move |&o| (o, hash))).collect();
                let mut p = root.create(name, incarnation, i, old.cq.start())?;
                for o in old.cq.start()..old.cq.end() {
                    let e = old.cq.get(o).expect("every offset in start..end has an entry");
                    p.cq.append(e.log_index, e.slot, e.size, e.timestamp_ms, e.tag_hash, key_of.get(&o).copied())?;
                }
                p.bytes = old.bytes;
                Ok(p)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::server::entry::{Command, StoredRecord};

    fn create(s: &mut State, index: u64, name: &str, partitions: u32) {
        let c = Command::CreateTopic {
            name: name.into(),
            partitions,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 1 << 20,
        };
        assert_eq!(s.apply(index, 0, Decoded::Command(c)).expect("apply"), Applied::Command(Ok(())));
    }

    fn record(key: &str, tag: &str, ts: u64) -> StoredRecord {
        StoredRecord {
            timestamp_ms: ts,
            key: Bytes::copy_from_slice(key.as_bytes()),
            tag: Bytes::copy_from_slice(tag.as_bytes()),
            headers: vec![],
            value: Bytes::from_static(b"v"),
            encoded_bytes: 30,
        }
    }

    fn batch(topic: &str, inc: u64, pid: u64, seq: u64, records: Vec<StoredRecord>) -> StoredBatch {
        StoredBatch {
            topic: topic.into(),
            incarnation: inc,
            partition: 0,
            producer_id: pid,
            first_sequence: seq,
            records,
        }
    }

    fn produce(s: &mut State, index: u64, b: StoredBatch) -> BatchOutcome {
        match s.apply(index, 1000, Decoded::Produce(vec![b])).expect("apply") {
            Applied::Batches(mut v) => v.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_checkpointed_queue_that_runs_past_the_last_offset_or_splits_an_entry_is_refused() {
        // bincode lays a struct out as a tuple of its fields.
        let queue = |base: u64, len: usize| crate::server::codec::encode(&(base, vec![0u8; len]));
        let cq: ConsumeQueue = crate::server::codec::decode(&queue(7, 2 * CQ_ENTRY_BYTES)).expect("a valid queue");
        assert_eq!((cq.start(), cq.end()), (7, 9));
        assert!(crate::server::codec::decode::<ConsumeQueue>(&queue(u64::MAX, CQ_ENTRY_BYTES)).is_err());
        assert!(crate::server::codec::decode::<ConsumeQueue>(&queue(0, CQ_ENTRY_BYTES + 1)).is_err());
        let cq: ConsumeQueue = crate::server::codec::decode(&queue(u64::MAX, 0)).expect("empty at the end");
        assert_eq!(cq.get(u64::MAX), None);
    }

    #[test]
    fn offsets_are_dense_and_slots_count_across_batches() {
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "a", 1);
        create(&mut s, 2, "b", 1);
        let out = s
            .apply(
                3,
                0,
                Decoded::Produce(vec![
                    batch("a", 1, 0, 0, vec![record("", "", 1), record("", "", 2)]),
                    batch("b", 2, 0, 0, vec![record("", "", 3)]),
                    batch("a", 1, 0, 0, vec![record("", "", 4)]),
                ]),
            )
            .expect("apply");
        let Applied::Batches(v) = out else { panic!("not batches") };
        assert_eq!(v[0], BatchOutcome::Stored { base_offset: 0, count: 2, duplicate: false, log_index: 3 });
        assert_eq!(v[1], BatchOutcome::Stored { base_offset: 0, count: 1, duplicate: false, log_index: 3 });
        assert_eq!(v[2], BatchOutcome::Stored { base_offset: 2, count: 1, duplicate: false, log_index: 3 });
        let (entries, next) = s.scan("a", 0, 0, u64::MAX, 100, &[]).expect("scan");
        assert_eq!(entries.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![0, 1, 3], "slots skip batch b");
        assert_eq!(next, 3);
        assert_eq!(s.scan("b", 0, 0, u64::MAX, 100, &[]).expect("scan").0[0].slot, 2);
    }

    #[test]
    fn a_retried_batch_returns_its_first_offsets_and_stores_nothing() {
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        let first = produce(&mut s, 2, batch("t", 1, 7, 0, vec![record("", "", 1), record("", "", 1)]));
        let _ = produce(&mut s, 3, batch("t", 1, 7, 2, vec![record("", "", 1)]));
        let retry = produce(&mut s, 4, batch("t", 1, 7, 0, vec![record("", "", 1), record("", "", 1)]));
        assert_eq!(retry, BatchOutcome::Stored { base_offset: 0, count: 2, duplicate: true, log_index: 2 });
        assert_ne!(first, retry);
        assert_eq!(s.partition("t", 0).expect("partition").cq.end(), 3, "the retry stored records");
        let overlap = produce(&mut s, 5, batch("t", 1, 7, 1, vec![record("", "", 1), record("", "", 1)]));
        assert!(matches!(overlap, BatchOutcome::Rejected(Reject::OutOfOrderSequence { .. })), "{overlap:?}");
        // Producers that are forgotten start afresh.
        assert_eq!(
            s.apply(6, 5000, Decoded::Command(Command::ExpireProducers { idle_before_ms: 2000 })).expect("apply"),
            Applied::Command(Ok(()))
        );
        let again = produce(&mut s, 7, batch("t", 1, 7, 0, vec![record("", "", 1), record("", "", 1)]));
        assert_eq!(again, BatchOutcome::Stored { base_offset: 3, count: 2, duplicate: false, log_index: 7 });
    }

    /// The message of an OUT_OF_ORDER_SEQUENCE refusal; panics on any other outcome.
    #[track_caller]
    fn out_of_order(outcome: BatchOutcome) -> String {
        match outcome {
            BatchOutcome::Rejected(r @ Reject::OutOfOrderSequence { .. }) => r.to_string(),
            other => panic!("expected OUT_OF_ORDER_SEQUENCE, got {other:?}"),
        }
    }

    #[test]
    fn a_sequence_gap_is_refused_naming_the_expected_and_the_received_sequence() {
        // Phase: producer 7 stores sequences 0..=4 in one batch.
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        let five = || (0..5).map(|_| record("", "", 1)).collect::<Vec<_>>();
        let first = produce(&mut s, 2, batch("t", 1, 7, 0, five()));
        assert_eq!(first, BatchOutcome::Stored { base_offset: 0, count: 5, duplicate: false, log_index: 2 });
        // Phase: a batch at sequence 100 is a gap: refused naming 5 and 100, nothing stored.
        let gap = produce(&mut s, 3, batch("t", 1, 7, 100, vec![record("", "", 1)]));
        assert!(matches!(&gap, BatchOutcome::Rejected(Reject::OutOfOrderSequence { expected: 5, .. })), "{gap:?}");
        let m = out_of_order(gap);
        assert!(m.contains("expected sequence 5") && m.contains("sent sequence 100"), "{m}");
        assert_eq!(s.partition("t", 0).expect("partition").cq.end(), 5, "the gap was stored");
        // Phase: the expected sequence is stored; an exact retry of either
        // remembered batch is a duplicate answered with its offsets.
        let next = produce(&mut s, 4, batch("t", 1, 7, 5, vec![record("", "", 1)]));
        assert_eq!(next, BatchOutcome::Stored { base_offset: 5, count: 1, duplicate: false, log_index: 4 });
        let retry = produce(&mut s, 5, batch("t", 1, 7, 0, five()));
        assert_eq!(retry, BatchOutcome::Stored { base_offset: 0, count: 5, duplicate: true, log_index: 2 });
        let retry = produce(&mut s, 6, batch("t", 1, 7, 5, vec![record("", "", 1)]));
        assert_eq!(retry, BatchOutcome::Stored { base_offset: 5, count: 1, duplicate: true, log_index: 4 });
        // Phase: an overlap, and a remembered first sequence with another
        // count, are refused naming the expected sequence; nothing stored.
        let m = out_of_order(produce(&mut s, 7, batch("t", 1, 7, 3, five())));
        assert!(m.contains("expected sequence 6") && m.contains("sequence 3"), "{m}");
        let m = out_of_order(produce(&mut s, 8, batch("t", 1, 7, 0, vec![record("", "", 1)])));
        assert!(m.contains("expected sequence 6") && m.contains("stored with 5"), "{m}");
        assert_eq!(s.partition("t", 0).expect("partition").cq.end(), 6);
    }

    #[test]
    fn a_producer_the_state_does_not_know_starts_at_any_sequence() {
        // Phase: a new producer id starts at 1000, and then must go on at 1001.
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        let one = || vec![record("", "", 1)];
        assert!(matches!(produce(&mut s, 2, batch("t", 1, 9, 1000, one())), BatchOutcome::Stored { .. }));
        let m = out_of_order(produce(&mut s, 3, batch("t", 1, 9, 1002, one())));
        assert!(m.contains("expected sequence 1001") && m.contains("1002"), "{m}");
        assert!(matches!(produce(&mut s, 4, batch("t", 1, 9, 1001, one())), BatchOutcome::Stored { .. }));
        // Phase: forgotten after producer.id.expiry.ms, it may start anywhere again.
        let expire = Decoded::Command(Command::ExpireProducers { idle_before_ms: 2000 });
        assert_eq!(s.apply(5, 5000, expire).expect("apply"), Applied::Command(Ok(())));
        let again = produce(&mut s, 6, batch("t", 1, 9, 0, one()));
        assert_eq!(again, BatchOutcome::Stored { base_offset: 2, count: 1, duplicate: false, log_index: 6 });
    }

    #[test]
    fn a_batch_older_than_the_window_is_refused_and_not_stored_again() {
        // Phase: one more batch than the window remembers.
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        for seq in 0..=PRODUCER_WINDOW as u64 {
            let stored = produce(&mut s, 2 + seq, batch("t", 1, 7, seq, vec![record("", "", 1)]));
            assert!(matches!(stored, BatchOutcome::Stored { duplicate: false, .. }), "{seq}: {stored:?}");
        }
        // Phase: a retry of the forgotten first batch is refused, naming the window.
        let m = out_of_order(produce(&mut s, 1000, batch("t", 1, 7, 0, vec![record("", "", 1)])));
        assert!(m.contains("older than the 256 batches remembered") && m.contains("expected sequence 257"), "{m}");
        assert_eq!(s.partition("t", 0).expect("partition").cq.end(), PRODUCER_WINDOW as u64 + 1);
    }

    #[test]
    fn a_producer_window_checkpoints_as_before_and_its_next_sequence_survives_a_reload() {
        // Phase: the checkpoint bytes of a producer are its window and
        // last-seen time, nothing more (the layout of earlier builds).
        let window: VecDeque<RememberedBatch> = [(0, 5), (5, 2)]
            .into_iter()
            .map(|(first_sequence, count)| RememberedBatch { first_sequence, count, base_offset: 0, log_index: 2 })
            .collect();
        let p = ProducerState { recent: window.clone(), last_seen_ms: 9, next: 7 };
        let bytes = crate::server::codec::encode(&p);
        assert_eq!(bytes, crate::server::codec::encode(&(window.clone(), 9u64)));
        let back: ProducerState = crate::server::codec::decode(&bytes).expect("decodes");
        assert_eq!((back.next_sequence(), back.last_seen_ms, back.recent), (7, 9, window));
        // Phase: a window an older build stored out of order: the highest counts.
        let unordered: VecDeque<RememberedBatch> = [(10, 5), (0, 2)]
            .into_iter()
            .map(|(first_sequence, count)| RememberedBatch { first_sequence, count, base_offset: 0, log_index: 2 })
            .collect();
        let back: ProducerState =
            crate::server::codec::decode(&crate::server::codec::encode(&(unordered, 1u64))).expect("decodes");
        assert_eq!(back.next_sequence(), 15);
        // Phase: a whole state reloaded from its checkpoint bytes expects
        // the same sequence as the state it was taken from.
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        for seq in 0..3 {
            produce(&mut s, 2 + seq, batch("t", 1, 7, seq * 4, vec![record("", "", 1); 4]));
        }
        let reloaded = reload(&mut s);
        assert_eq!(s.producer_next_sequence(7, "t", 0), Some(12));
        assert_eq!(reloaded.producer_next_sequence(7, "t", 0), Some(12));
    }
    #[test]
    fn a_deleted_and_recreated_topic_refuses_batches_of_the_old_incarnation() {
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        assert!(matches!(
            produce(&mut s, 2, batch("t", 1, 0, 0, vec![record("", "", 1)])),
            BatchOutcome::Stored { .. }
        ));
        s.apply(3, 0, Decoded::Command(Command::DeleteTopic { name: "t".into() })).expect("apply");
        create(&mut s, 4, "t", 1);
        let stale = produce(&mut s, 5, batch("t", 1, 0, 0, vec![record("", "", 1)]));
        assert!(matches!(stale, BatchOutcome::Rejected(Reject::UnknownTopic(_))), "{stale:?}");
        assert_eq!(s.partition("t", 0).expect("partition").cq.end(), 0, "old records visible after re-create");
    }

    #[test]
    fn key_time_and_tag_indexes_answer_and_trim_keeps_them_exact() {
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 1);
        for (i, (key, tag, ts)) in
            [("k1", "A", 100), ("k2", "B", 300), ("k1", "", 200), ("k3", "A", 400)].into_iter().enumerate()
        {
            produce(&mut s, 2 + i as u64, batch("t", 1, 0, 0, vec![record(key, tag, ts)]));
        }
        let k1: Vec<u64> = s.key_candidates("t", 0, b"k1").expect("lookup").iter().map(|e| e.offset).collect();
        assert_eq!(k1, vec![0, 2]);
        assert_eq!(s.offset_for_timestamp("t", 0, 150).expect("t").map(|e| e.offset), Some(1));
        assert_eq!(s.offset_for_timestamp("t", 0, 350).expect("t").map(|e| e.offset), Some(3));
        assert_eq!(s.offset_for_timestamp("t", 0, 401).expect("t"), None);
        let a = [tag_hash(b"A")];
        let (entries, next) = s.scan("t", 0, 0, u64::MAX, 100, &a).expect("scan");
        assert_eq!(entries.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(next, 4);
        s.apply(
            9,
            0,
            Decoded::Command(Command::Trim { topic: "t".into(), incarnation: 1, partition: 0, start_offset: 2 }),
        )
        .expect("apply");
        let k1: Vec<u64> = s.key_candidates("t", 0, b"k1").expect("lookup").iter().map(|e| e.offset).collect();
        assert_eq!(k1, vec![2]);
        assert_eq!(s.offset_for_timestamp("t", 0, 150).expect("t").map(|e| e.offset), Some(2), "first retained ≥ 150");
        let err = s.scan("t", 0, 1, u64::MAX, 100, &[]).expect_err("trimmed offset served");
        assert!(matches!(err, Reject::OffsetOutOfRange { start: 2, end: 4, .. }), "{err:?}");
        assert_eq!(s.partition("t", 0).expect("p").bytes, 60);
    }

    #[test]
    fn bad_names_and_offsets_are_refused_naming_the_value() {
        let mut s = State::new(IndexRoot::temp(4));
        for bad in ["", ".", "a b", "ä", &"x".repeat(250)] {
            let c = Command::CreateTopic {
                name: bad.into(),
                partitions: 1,
                retention_ms: -1,
                retention_bytes: -1,
                max_message_bytes: 1,
            };
            assert!(
                matches!(s.apply(1, 0, Decoded::Command(c)).expect("apply"), Applied::Command(Err(Reject::Invalid(_)))),
                "{bad:?}"
            );
        }
        create(&mut s, 2, "t", 1);
        let c = Command::CommitOffset { group: "g".into(), topic: "t".into(), partition: 0, offset: 5 };
        let Applied::Command(Err(e)) = s.apply(3, 0, Decoded::Command(c)).expect("apply") else {
            panic!("commit past the end accepted")
        };
        assert!(e.to_string().contains("offset 5"), "{e}");
        assert!(s.groups.is_empty());
    }

    /// The state a checkpoint of `s` gives back, over the same files.
    fn reload(s: &mut State) -> State {
        let bytes = crate::server::codec::encode(&s.stored().expect("flush the index files").0);
        let stored: StoredState = crate::server::codec::decode(&bytes).expect("decodes");
        State::restore(stored, s.root().clone()).expect("restore")
    }

    #[test]
    fn state_survives_a_checkpoint_round_trip_over_its_index_files() {
        let mut s = State::new(IndexRoot::temp(4));
        create(&mut s, 1, "t", 2);
        for i in 0..10u64 {
            produce(&mut s, 2 + i, batch("t", 1, 3, i, vec![record(&format!("k{}", i % 3), "T", 5 + i)]));
        }
        let mut back = reload(&mut s);
        assert_eq!(
            back.key_candidates("t", 0, b"k1").expect("k").iter().map(|e| e.offset).collect::<Vec<_>>(),
            [1, 4, 7]
        );
        assert_eq!(back.offset_for_timestamp("t", 0, 9).expect("t").map(|e| e.offset), Some(4));
        assert_eq!(back.producer_next_sequence(3, "t", 0), Some(10));
        assert_eq!(back.partition("t", 0).expect("p").bytes, 300);
        // Entries applied after the checkpoint are forgotten by a reload
        // from it, and appended again by the replay that follows.
        let (stored, _) = back.stored().expect("flush");
        produce(&mut back, 20, batch("t", 1, 3, 10, vec![record("k1", "", 50)]));
        let mut again = State::restore(stored, back.root().clone()).expect("restore");
        assert_eq!(again.partition("t", 0).expect("p").cq.end(), 10);
        let replayed = produce(&mut again, 20, batch("t", 1, 3, 10, vec![record("k1", "", 50)]));
        assert_eq!(replayed, BatchOutcome::Stored { base_offset: 10, count: 1, duplicate: false, log_index: 20 });
        assert_eq!(again.key_candidates("t", 0, b"k1").expect("k").len(), 4);
    }
}
