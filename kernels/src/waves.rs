//! Waves of a batched GRU step: both backends apply a batch of events as waves in which every slot
//! appears at most once, so that a slot's several events in one batch apply in order.

use std::collections::HashMap;

use crate::Event;

/// Splits `events` into waves in which every slot appears at most once, keeping each slot's events in
/// order: an event goes to the wave after its slot's previous event. Returns the events reordered by
/// wave and the wave boundaries.
pub(crate) fn waves(events: &[Event]) -> (Vec<Event>, Vec<usize>) {
    let mut last: HashMap<u32, usize> = HashMap::with_capacity(events.len());
    let wave_of: Vec<usize> = events
        .iter()
        .map(|e| {
            let w = last.get(&e.slot).map_or(0, |&w| w + 1);
            last.insert(e.slot, w);
            w
        })
        .collect();
    let n_waves = wave_of.iter().max().map_or(0, |&w| w + 1);
    let mut bounds = vec![0usize; n_waves + 1];
    for &w in &wave_of {
        bounds[w + 1] += 1;
    }
    for w in 0..n_waves {
        bounds[w + 1] += bounds[w];
    }
    let mut next = bounds.clone();
    let mut ordered = events.to_vec();
    for (e, &w) in events.iter().zip(&wave_of) {
        ordered[next[w]] = *e;
        next[w] += 1;
    }
    (ordered, bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(slot: u32, item: u32) -> Event {
        Event { slot, item }
    }

    #[test]
    fn waves_keep_each_slot_in_order_and_once_per_wave() {
        let events = [
            ev(1, 10),
            ev(2, 20),
            ev(1, 11),
            ev(3, 30),
            ev(1, 12),
            ev(2, 21),
        ];
        let (ordered, bounds) = waves(&events);
        assert_eq!(bounds, [0, 3, 5, 6]);
        assert_eq!(
            ordered,
            [
                ev(1, 10),
                ev(2, 20),
                ev(3, 30),
                ev(1, 11),
                ev(2, 21),
                ev(1, 12)
            ]
        );
        let (ordered, bounds) = waves(&[]);
        assert!(ordered.is_empty());
        assert_eq!(bounds, [0]);
    }
}
