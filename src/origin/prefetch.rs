//! First-chunk answers of cold metadata lookups, parked for the fill that takes them.

use super::RangeAnswer;
use std::sync::Arc;

/// Answers that a cold GET's metadata lookup received ([`Origin::get_first`](super::Origin::get_first),
/// [`Origin::get_suffix`](super::Origin::get_suffix)), parked until the chunk stack asks the origin for bytes starting
/// where the answer starts: that read takes the bytes already on their way instead of asking
/// again. An answer nobody takes (the client went away, a conditional GET was answered 304,
/// the chunk was in the store after all) is dropped after [`Prefetched::KEEP`], which closes
/// its connection.
#[derive(Clone, Default)]
pub struct Prefetched {
    parked: Arc<std::sync::Mutex<std::collections::HashMap<PrefetchKey, Parked>>>,
}

type PrefetchKey = (Arc<str>, Arc<str>, Arc<str>);

struct Parked {
    /// Where the answer's bytes start in the object.
    offset: u64,
    /// Bytes the answer carries.
    len: u64,
    answer: RangeAnswer,
    /// How long the origin took to answer (counted when a fill takes the answer).
    first_byte: std::time::Duration,
    /// Tells a parked answer from a later one of the same key when it expires.
    id: u64,
}

impl Prefetched {
    /// How long an answer waits for its fill.
    pub const KEEP: std::time::Duration = std::time::Duration::from_secs(10);

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PrefetchKey, Parked>> {
        crate::layer::lock(&self.parked)
    }

    /// Parks `bytes` of version `etag` of `bucket/key`, which the origin took `first_byte`
    /// to start answering.
    pub fn park(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        bytes: std::ops::Range<u64>,
        answer: RangeAnswer,
        first_byte: std::time::Duration,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k: PrefetchKey = (bucket.into(), key.into(), etag.into());
        self.lock().insert(
            k.clone(),
            Parked {
                offset: bytes.start,
                len: bytes.end.saturating_sub(bytes.start),
                answer,
                id,
                first_byte,
            },
        );
        let weak = Arc::downgrade(&self.parked);
        tokio::spawn(async move {
            tokio::time::sleep(Self::KEEP).await;
            if let Some(parked) = weak.upgrade() {
                let mut map = crate::layer::lock(&parked);
                if map.get(&k).is_some_and(|p| p.id == id) {
                    map.remove(&k);
                }
            }
        });
    }

    /// Takes the parked bytes of version `etag` of `bucket/key` if they start at `offset`:
    /// `(len, answer, time the origin took to answer)`.
    pub fn take(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        offset: u64,
    ) -> Option<(u64, RangeAnswer, std::time::Duration)> {
        let k: PrefetchKey = (bucket.into(), key.into(), etag.into());
        let mut map = self.lock();
        if map.get(&k)?.offset != offset {
            return None;
        }
        map.remove(&k).map(|p| (p.len, p.answer, p.first_byte))
    }

    /// Answers parked right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
