//! An in-memory [`EventLog`] for tests: durable for as long as the process keeps the shared vector,
//! so a "restart" (dropping the log and opening another on the same [`MemoryLog::shared`]) keeps it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{
    Bounds, EventLog, LogError, LogReader, LogRecord, Position, Result, SessionReader,
    SessionRecords, session_hash,
};

#[derive(Debug, Default)]
struct Inner {
    /// Position of `records[0]`.
    first: Position,
    records: Vec<LogRecord>,
    bytes: u64,
}

/// The storage a [`MemoryLog`] writes to; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage(Arc<Mutex<Inner>>);

impl MemoryStorage {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if g.first == 0 {
            g.first = 1;
        }
        g
    }
}

/// An [`EventLog`] in memory.
#[derive(Debug, Default)]
pub struct MemoryLog {
    storage: MemoryStorage,
}

impl MemoryLog {
    /// A log over `storage` (pass a clone of another log's [`MemoryLog::shared`] to reopen it).
    pub fn new(storage: MemoryStorage) -> Self {
        MemoryLog { storage }
    }

    /// The storage this log writes to.
    pub fn shared(&self) -> MemoryStorage {
        self.storage.clone()
    }
}

impl EventLog for MemoryLog {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn append(&mut self, records: &[LogRecord]) -> Result<Vec<Position>> {
        let mut g = self.storage.lock();
        let start = g.first + g.records.len() as u64;
        g.bytes += records
            .iter()
            .map(|r| prost::Message::encoded_len(r) as u64)
            .sum::<u64>();
        g.records.extend_from_slice(records);
        Ok((start..start + records.len() as u64).collect())
    }

    /// A session's records are those of its subject on JetStream: every session id with the same
    /// hash.
    fn append_expecting(
        &mut self,
        records: &[LogRecord],
        expected: &[Option<Position>],
    ) -> Result<Vec<(Position, bool)>> {
        let mut out = Vec::with_capacity(records.len());
        for (r, e) in records.iter().zip(expected) {
            let contiguous = e.is_some_and(|e| {
                let g = self.storage.lock();
                let hash = session_hash(&r.session_id);
                let last = g
                    .records
                    .iter()
                    .rposition(|o| session_hash(&o.session_id) == hash);
                last.map_or(0, |i| g.first + i as Position) == e
            });
            let position = self.append(std::slice::from_ref(r))?[0];
            out.push((position, contiguous));
        }
        Ok(out)
    }

    fn bounds(&self) -> Result<Bounds> {
        let g = self.storage.lock();
        Ok(Bounds {
            first: g.first,
            next: g.first + g.records.len() as u64,
        })
    }

    fn reader(&self, from: Position) -> Result<Box<dyn LogReader>> {
        let first = self.storage.lock().first;
        if from < first {
            return Err(LogError::Released {
                requested: from,
                first,
            });
        }
        Ok(Box::new(MemoryReader {
            storage: self.storage.clone(),
            next: from,
        }))
    }

    fn release_before(&mut self, position: Position) -> Result<Position> {
        let mut g = self.storage.lock();
        let end = g.first + g.records.len() as u64;
        let cut = position.clamp(g.first, end);
        let n = (cut - g.first) as usize;
        let freed: u64 = g.records[..n]
            .iter()
            .map(|r| prost::Message::encoded_len(r) as u64)
            .sum();
        g.records.drain(..n);
        g.bytes -= freed;
        g.first = cut;
        Ok(cut)
    }

    fn stored_bytes(&self) -> u64 {
        self.storage.lock().bytes
    }

    fn session_reader(&self) -> Option<Box<dyn SessionReader>> {
        Some(Box::new(self.storage.clone()))
    }
}

/// A scan of the whole log per call: the memory log is for tests.
impl SessionReader for MemoryStorage {
    fn records_after(&mut self, queries: &[(&str, Position)]) -> Result<Vec<SessionRecords>> {
        let g = self.lock();
        let at = |i: usize| g.first + i as Position;
        Ok(queries
            .iter()
            .map(|&(id, after)| {
                let records = g.records.iter().enumerate();
                records
                    .filter(|&(i, r)| at(i) > after && r.session_id == id)
                    .map(|(i, r)| (at(i), r.clone()))
                    .collect()
            })
            .collect())
    }
}

struct MemoryReader {
    storage: MemoryStorage,
    next: Position,
}

impl LogReader for MemoryReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<(Position, LogRecord)>> {
        let g = self.storage.lock();
        if self.next < g.first {
            return Err(LogError::Released {
                requested: self.next,
                first: g.first,
            });
        }
        let start = (self.next - g.first) as usize;
        let out: Vec<_> = g
            .records
            .iter()
            .skip(start)
            .take(max)
            .enumerate()
            .map(|(i, r)| (self.next + i as u64, r.clone()))
            .collect();
        self.next += out.len() as u64;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Harness};

    struct Mem(MemoryStorage);

    impl Harness for Mem {
        fn open(&mut self) -> Box<dyn EventLog> {
            Box::new(MemoryLog::new(self.0.clone()))
        }
    }

    #[test]
    fn memory_log_passes_the_conformance_suite() {
        conformance::run_all(&mut || Box::new(Mem(MemoryStorage::default())) as Box<dyn Harness>);
    }
}
