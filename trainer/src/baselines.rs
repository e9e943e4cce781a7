//! The baselines every evaluation reports beside the model: POP (most popular items) and item-kNN
//! (GRU4Rec paper's baseline: items that co-occur in sessions with the current item, cosine-like
//! similarity with support regularisation).

use std::collections::HashMap;

use crate::data::Sessions;
use crate::eval::SessionRecommender;

/// Recommends the most popular training items regardless of the session. Item indices are ordered by
/// popularity, so the answer is simply `0..k`.
pub struct Pop {
    n_items: usize,
}

impl Pop {
    pub fn new(n_items: usize) -> Self {
        Pop { n_items }
    }
}

impl SessionRecommender for Pop {
    fn name(&self) -> &str {
        "pop"
    }
    fn reset(&mut self) {}
    fn observe(&mut self, _item: u32) {}
    fn recommend(&mut self, k: usize) -> Vec<u32> {
        (0..k.min(self.n_items) as u32).collect()
    }
}

/// Item-kNN: `sim(i, j) = cooc(i, j) / (sqrt(supp(i) · supp(j)) + λ)`, where `supp` counts the training
/// sessions containing an item and `cooc` the sessions containing both. The next items for a session are
/// the neighbours of its last item; lists shorter than k are filled with popular items.
pub struct ItemKnn {
    n_items: usize,
    neighbours: Vec<Vec<(u32, f32)>>,
    last: Option<u32>,
}

impl ItemKnn {
    pub const DEFAULT_LAMBDA: f32 = 20.0;

    pub fn fit(train: &Sessions, n_items: usize, lambda: f32, keep: usize) -> Self {
        let mut support = vec![0u32; n_items];
        let mut cooc: Vec<HashMap<u32, u32>> = vec![HashMap::new(); n_items];
        let mut uniq = Vec::new();
        for s in 0..train.len() {
            uniq.clear();
            uniq.extend_from_slice(train.session(s));
            uniq.sort_unstable();
            uniq.dedup();
            for (a, &i) in uniq.iter().enumerate() {
                support[i as usize] += 1;
                for &j in &uniq[a + 1..] {
                    *cooc[i as usize].entry(j).or_default() += 1;
                    *cooc[j as usize].entry(i).or_default() += 1;
                }
            }
        }
        let neighbours = cooc
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let mut list: Vec<(u32, f32)> = row
                    .into_iter()
                    .map(|(j, c)| {
                        let norm = (support[i] as f32 * support[j as usize] as f32).sqrt() + lambda;
                        (j, c as f32 / norm)
                    })
                    .collect();
                list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                list.truncate(keep);
                list
            })
            .collect();
        ItemKnn {
            n_items,
            neighbours,
            last: None,
        }
    }
}

impl SessionRecommender for ItemKnn {
    fn name(&self) -> &str {
        "item-knn"
    }
    fn reset(&mut self) {
        self.last = None;
    }
    fn observe(&mut self, item: u32) {
        self.last = Some(item);
    }
    fn recommend(&mut self, k: usize) -> Vec<u32> {
        let mut out: Vec<u32> = match self.last {
            Some(i) => self.neighbours[i as usize]
                .iter()
                .take(k)
                .map(|&(j, _)| j)
                .collect(),
            None => Vec::new(),
        };
        let mut next = 0u32;
        while out.len() < k.min(self.n_items) {
            if !out.contains(&next) {
                out.push(next);
            }
            next += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(list: &[&[u32]]) -> Sessions {
        let mut offsets = vec![0];
        let mut items = Vec::new();
        for s in list {
            items.extend_from_slice(s);
            offsets.push(items.len());
        }
        Sessions {
            offsets,
            times: vec![0.0; items.len()],
            keys: (0..list.len()).map(|i| i.to_string()).collect(),
            items,
        }
    }

    #[test]
    fn item_knn_ranks_by_regularised_cooccurrence() {
        // item 1 co-occurs with 2 three times, with 3 once; supports: 1→4, 2→3, 3→1
        let train = sessions(&[&[1, 2], &[2, 1], &[1, 2, 2], &[1, 3], &[0, 4], &[0, 4]]);
        let mut knn = ItemKnn::fit(&train, 5, 0.0, 10);
        knn.observe(1);
        let rec = knn.recommend(3);
        // sim(1,2) = 3/sqrt(12) ≈ 0.87 > sim(1,3) = 1/2; then filled with the most popular item 0
        assert_eq!(rec, vec![2, 3, 0]);
        knn.reset();
        assert_eq!(knn.recommend(2), vec![0, 1]);
    }

    #[test]
    fn pop_recommends_the_first_indices() {
        let mut p = Pop::new(3);
        assert_eq!(p.recommend(5), vec![0, 1, 2]);
    }
}
