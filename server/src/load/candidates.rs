//! Score mode's candidate lists, as a product service would send them: the served model's catalogue
//! (its bundle's `items.arrow`), candidates drawn from it by training popularity without duplicates,
//! the session's true next item among them at a random place, and the answer ranked back into a
//! top-k list.
//!
//! Drawing is successive sampling (each draw proportional to popularity among the items not drawn
//! yet): rejection of repeats while that is cheap, then Efraimidis–Spirakis keys over the rest, which
//! is the same distribution and bounded work however large the share of the catalogue asked for.

use std::cell::RefCell;
use std::collections::HashMap;

use lambdarec_proto::bundle::{BundleError, ItemTable, Store};
use lambdarec_proto::v1::ScoredItem;
use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

/// The served model's catalogue with its popularity.
#[derive(Debug)]
pub(crate) struct Catalogue {
    ids: Vec<String>,
    index: HashMap<String, u32>,
    /// Draw weights: training popularity, or 1 each when the bundle records none.
    weights: Vec<u64>,
    /// Running sums of `weights`, for draws by binary search.
    cumulative: Vec<u64>,
}

/// Why the catalogue could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the catalogue of {model} version {version} from {store}: {source}")]
    Read {
        store: String,
        model: String,
        version: String,
        #[source]
        source: Box<BundleError>,
    },
    #[error("the catalogue of {model} version {version} is empty")]
    Empty { model: String, version: String },
}

impl Catalogue {
    /// Reads the items of exactly the version being served.
    pub(crate) async fn load(
        store: &str,
        model: &str,
        version: &str,
    ) -> Result<Self, CatalogueError> {
        let read_err = |source| CatalogueError::Read {
            store: store.to_string(),
            model: model.to_string(),
            version: version.to_string(),
            source: Box::new(source),
        };
        let opened = Store::open(store).map_err(read_err)?;
        let bundle = opened
            .read_bundle(model, Some(version))
            .await
            .map_err(read_err)?;
        Catalogue::new(bundle.items).ok_or_else(|| CatalogueError::Empty {
            model: model.to_string(),
            version: version.to_string(),
        })
    }

    /// None when the table has no items.
    pub(crate) fn new(items: ItemTable) -> Option<Self> {
        if items.ids.is_empty() {
            return None;
        }
        let mut weights = items.popularity;
        weights.resize(items.ids.len(), 0);
        if weights.iter().all(|&w| w == 0) {
            weights.fill(1);
        }
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum = sum.saturating_add(w);
                Some(*sum)
            })
            .collect();
        let index = (0u32..)
            .zip(&items.ids)
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Some(Catalogue {
            ids: items.ids,
            index,
            weights,
            cumulative,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub(crate) fn id(&self, i: u32) -> &str {
        &self.ids[i as usize]
    }

    /// `n` distinct items (all of them when `n` ≥ the catalogue), `target` among them when given,
    /// in random order.
    pub(crate) fn draw(&self, target: Option<u32>, n: usize, rng: &mut SmallRng) -> Vec<u32> {
        let want = n.min(self.len());
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        if want == self.len() {
            chosen.extend(0..self.len() as u32);
        } else {
            SEEN.with_borrow_mut(|seen| {
                seen.resize(self.len().div_ceil(64), 0);
                let mut seen = Bits(seen);
                if let Some(t) = target.filter(|_| want > 0) {
                    seen.insert(t);
                    chosen.push(t);
                }
                // Rejection wastes draws once the items left are a small share of the weight.
                if want * 4 < self.len() {
                    self.draw_by_rejection(want, &mut chosen, &mut seen, rng);
                }
                if chosen.len() < want {
                    self.draw_by_keys(want, &mut chosen, &seen, rng);
                }
                for &i in &chosen {
                    seen.remove(i);
                }
            });
        }
        chosen.shuffle(rng);
        chosen
    }

    /// Draws with replacement and skips repeats, within a budget of draws that keeps it cheap.
    fn draw_by_rejection(
        &self,
        want: usize,
        chosen: &mut Vec<u32>,
        seen: &mut Bits<'_>,
        rng: &mut SmallRng,
    ) {
        let total = *self.cumulative.last().unwrap_or(&0);
        let budget = 4 * want + 64;
        for _ in 0..budget {
            if chosen.len() >= want || total == 0 {
                return;
            }
            let r = rng.random_range(0..total);
            let i = self.cumulative.partition_point(|&c| c <= r) as u32;
            if seen.insert(i) {
                chosen.push(i);
            }
        }
    }

    /// Completes `chosen` with the items of largest key `ln(u) / weight` among those not drawn
    /// (Efraimidis–Spirakis); items of weight 0 come last, in random order.
    fn draw_by_keys(
        &self,
        want: usize,
        chosen: &mut Vec<u32>,
        seen: &Bits<'_>,
        rng: &mut SmallRng,
    ) {
        let mut keyed: Vec<(bool, f64, u32)> = (0..self.len() as u32)
            .filter(|&i| !seen.contains(i))
            .map(|i| {
                let u = 1.0 - rng.random::<f64>(); // (0, 1]: ln(u) is finite
                let w = self.weights[i as usize];
                (w > 0, u.ln() / w.max(1) as f64, i)
            })
            .collect();
        let short = want - chosen.len();
        let by_key =
            |a: &(bool, f64, u32), b: &(bool, f64, u32)| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1));
        if short < keyed.len() {
            keyed.select_nth_unstable_by(short, by_key);
            keyed.truncate(short);
        }
        chosen.extend(keyed.into_iter().map(|(_, _, i)| i));
    }
}

thread_local! {
    /// One bit per catalogue item: drawn already. Per thread, as a draw never awaits, and cleared
    /// bit by bit after each draw, so a draw costs what it draws, not the catalogue's size.
    static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A set of item indices as bits.
struct Bits<'a>(&'a mut Vec<u64>);

impl Bits<'_> {
    /// False when `i` was in already.
    fn insert(&mut self, i: u32) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    fn remove(&mut self, i: u32) {
        self.0[(i / 64) as usize] &= !(1u64 << (i % 64));
    }

    fn contains(&self, i: u32) -> bool {
        self.0[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }
}

/// The `k` best of a Score answer, best first: higher score first, ties broken by candidate order
/// (the order of the request, which the answer keeps).
pub(crate) fn top_k(scores: Vec<ScoredItem>, k: usize) -> Vec<String> {
    let mut ranked: Vec<(usize, ScoredItem)> = scores.into_iter().enumerate().collect();
    let order = |a: &(usize, ScoredItem), b: &(usize, ScoredItem)| {
        b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0))
    };
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k, order);
        ranked.truncate(k);
    }
    ranked.sort_unstable_by(order);
    ranked.into_iter().map(|(_, s)| s.item_id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashSet;

    fn catalogue(popularity: &[u64]) -> Catalogue {
        Catalogue::new(ItemTable {
            ids: (0..popularity.len()).map(|i| format!("item{i}")).collect(),
            popularity: popularity.to_vec(),
        })
        .unwrap()
    }

    fn distinct(list: &[u32]) -> bool {
        list.iter().collect::<HashSet<_>>().len() == list.len()
    }

    #[test]
    fn draws_are_distinct_hold_the_target_and_are_shuffled() {
        let c = catalogue(&(1..=500).rev().collect::<Vec<u64>>());
        let mut rng = SmallRng::seed_from_u64(3);
        let mut target_first = 0;
        for round in 0..200u32 {
            let target = 250 + round;
            let list = c.draw(Some(target), 50, &mut rng);
            assert_eq!(list.len(), 50);
            assert!(distinct(&list) && list.contains(&target), "{list:?}");
            target_first += usize::from(list[0] == target);
        }
        assert!(
            target_first < 20,
            "the target is first {target_first} times in 200"
        );
    }

    #[test]
    fn popular_items_are_drawn_more_often() {
        // Item 0 carries 90% of the weight, items 1..100 share the rest.
        let mut pop = vec![1u64; 101];
        pop[0] = 900;
        let c = catalogue(&pop);
        let mut rng = SmallRng::seed_from_u64(5);
        let (mut first, mut last) = (0, 0);
        for _ in 0..1000 {
            let list = c.draw(None, 5, &mut rng);
            first += usize::from(list.contains(&0));
            last += usize::from(list.contains(&100));
        }
        assert!(first > 950, "the popular item in {first} of 1000 lists");
        assert!(last < 150, "a tail item in {last} of 1000 lists");
        // Half the catalogue: drawn by keys, not by rejection; the same preference holds.
        let c = catalogue(&[300, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        let mut with_first = 0;
        for _ in 0..1000 {
            with_first += usize::from(c.draw(None, 3, &mut rng).contains(&0));
        }
        assert!(
            with_first > 950,
            "the popular item in {with_first} of 1000 lists"
        );
    }

    #[test]
    fn large_shares_and_zero_weights_terminate() {
        // Most items have weight 0: rejection cannot find them, the keyed pass must.
        let mut pop = vec![0u64; 300];
        pop[..3].copy_from_slice(&[10, 5, 1]);
        let c = catalogue(&pop);
        let mut rng = SmallRng::seed_from_u64(7);
        let list = c.draw(Some(299), 299, &mut rng);
        assert_eq!(list.len(), 299);
        assert!(distinct(&list) && list.contains(&299));
        assert!(
            [0, 1, 2].iter().all(|i| list.contains(i)),
            "weighted items first"
        );
        let all = c.draw(Some(5), 10_000, &mut rng);
        assert_eq!(all.len(), 300);
        assert!(distinct(&all));
        assert_eq!(c.draw(None, 0, &mut rng), Vec::<u32>::new());
    }

    #[test]
    fn draws_repeat_with_the_seed() {
        let c = catalogue(&[5, 4, 3, 2, 1, 1, 1, 1]);
        let a = c.draw(Some(7), 4, &mut SmallRng::seed_from_u64(9));
        let b = c.draw(Some(7), 4, &mut SmallRng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn no_popularity_means_uniform_and_empty_tables_are_refused() {
        let c = catalogue(&[0, 0, 0, 0]);
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(c.draw(None, 3, &mut rng).len(), 3);
        assert!(Catalogue::new(ItemTable::default()).is_none());
        assert_eq!((c.index("item2"), c.index("nope")), (Some(2), None));
        assert_eq!(c.id(3), "item3");
    }

    #[test]
    fn top_k_ranks_by_score_then_candidate_order() {
        let s = |id: &str, score| ScoredItem {
            item_id: id.to_string(),
            score,
        };
        let answer = vec![
            s("a", 0.5),
            s("b", 2.0),
            s("c", 0.5),
            s("d", -1.0),
            s("e", 2.0),
        ];
        assert_eq!(top_k(answer.clone(), 3), ["b", "e", "a"]);
        assert_eq!(top_k(answer.clone(), 10), ["b", "e", "a", "c", "d"]);
        assert_eq!(top_k(answer, 0), Vec::<String>::new());
    }
}
