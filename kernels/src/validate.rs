//! Input checks shared by every backend: each op validates all of its input before it changes
//! anything, with the same errors on every device.

use crate::{BackendError, Event, Result, ScoreQuery, TopKQuery};

/// `slot` as an index into a state table of `capacity` slots.
pub(crate) fn slot(slot: u32, capacity: usize) -> Result<usize> {
    let s = slot as usize;
    if s < capacity {
        Ok(s)
    } else {
        Err(BackendError::SlotOutOfRange { slot, capacity })
    }
}

pub(crate) fn slots(slots: &[u32], capacity: usize) -> Result<()> {
    for &s in slots {
        slot(s, capacity)?;
    }
    Ok(())
}

/// `slot_id` as an index, for writing a `len`-value state into a table of `capacity` rows of `hidden`.
pub(crate) fn state_write(
    slot_id: u32,
    len: usize,
    capacity: usize,
    hidden: usize,
) -> Result<usize> {
    let s = slot(slot_id, capacity)?;
    if len != hidden {
        return Err(BackendError::HiddenMismatch {
            got: len,
            want: hidden,
        });
    }
    Ok(s)
}

fn item(item: u32, n_items: usize) -> Result<()> {
    if (item as usize) < n_items {
        Ok(())
    } else {
        Err(BackendError::ItemOutOfRange { item, n_items })
    }
}

pub(crate) fn events(events: &[Event], capacity: usize, n_items: usize) -> Result<()> {
    for e in events {
        slot(e.slot, capacity)?;
        item(e.item, n_items)?;
    }
    Ok(())
}

pub(crate) fn score_queries(
    queries: &[ScoreQuery<'_>],
    capacity: usize,
    n_items: usize,
) -> Result<()> {
    for q in queries {
        slot(q.slot, capacity)?;
        for &c in q.candidates {
            item(c, n_items)?;
        }
    }
    Ok(())
}

pub(crate) fn top_k_queries(queries: &[TopKQuery<'_>], capacity: usize) -> Result<()> {
    for q in queries {
        slot(q.slot, capacity)?;
        if q.k == 0 {
            return Err(BackendError::ZeroK);
        }
    }
    Ok(())
}
