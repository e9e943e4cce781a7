//! Consistency of a bundle's parts with its manifest's dims, checked when writing (so a trainer never
//! publishes a bundle the server will refuse) and again when reading.

use super::{Bundle, BundleError, Dims};

/// The model kind whose tensor names and shapes this format knows.
pub const GRU4REC: &str = "gru4rec";

/// Checks the item table against `dims.n_items` and, for `gru4rec`, the tensor shapes:
///
/// - `gru.w_ih` [3H, E], `gru.w_hh` [3H, H], `gru.b_ih` [3H], `gru.b_hh` [3H] (gates r, z, n);
/// - `item_out` [N, H] and `item_bias` [N], the output layer;
/// - `item_in` [N, E], the input embedding: required unless `tied_embedding`, absent if tied, and
///   tying (input embedding = `item_out`) needs E = H.
///
/// Tensors with other names are allowed and not checked; other model kinds get only the generic
/// checks. `path` names the bundle in errors.
pub(crate) fn check_bundle(bundle: &Bundle, path: &str) -> Result<(), BundleError> {
    let m = &bundle.manifest;
    if m.model_kind.is_empty() {
        return Err(BundleError::format(path, "manifest.model_kind is empty"));
    }
    let n_items = bundle.items.ids.len() as u64;
    if n_items != m.dims.n_items {
        return Err(BundleError::format(
            path,
            format!(
                "items.arrow has {n_items} items but dims.n_items is {}",
                m.dims.n_items
            ),
        ));
    }
    if let Some(blend) = &m.blend {
        for (field, w) in [
            ("gru_weight", blend.gru_weight),
            ("trend_weight", blend.trend_weight),
        ] {
            if !(0.0..=1.0).contains(&w) {
                return Err(BundleError::format(
                    path,
                    format!("manifest.blend.{field} is {w}, not a weight in [0, 1]"),
                ));
            }
        }
        if let Some(h) = blend.trend_half_life_s
            && !(h > 0.0 && h.is_finite())
        {
            return Err(BundleError::format(
                path,
                format!(
                    "manifest.blend.trend_half_life_s is {h}, not a positive number of seconds"
                ),
            ));
        }
        for (field, n) in [
            ("knn_neighbours", blend.knn_neighbours),
            ("knn_sample", blend.knn_sample),
        ] {
            if n == Some(0) {
                return Err(BundleError::format(
                    path,
                    format!("manifest.blend.{field} is 0; it must be at least 1"),
                ));
            }
        }
    }
    if let Some(t) = &bundle.sessions {
        super::sessions::check(
            t,
            m.dims.n_items,
            &format!("{path}/{}", super::SESSIONS_FILE),
        )?;
    }
    if m.model_kind == GRU4REC {
        check_gru4rec(bundle, &m.dims, path)?;
    }
    Ok(())
}

fn check_gru4rec(bundle: &Bundle, dims: &Dims, path: &str) -> Result<(), BundleError> {
    let n = usize::try_from(dims.n_items)
        .map_err(|_| BundleError::format(path, "n_items overflows usize"))?;
    let e = dims.embed_dim as usize;
    let h = dims.hidden as usize;
    if h == 0 || e == 0 {
        return Err(BundleError::format(
            path,
            "dims.hidden and dims.embed_dim must be positive",
        ));
    }
    let mut expected: Vec<(&str, Vec<usize>)> = vec![
        ("gru.w_ih", vec![3 * h, e]),
        ("gru.w_hh", vec![3 * h, h]),
        ("gru.b_ih", vec![3 * h]),
        ("gru.b_hh", vec![3 * h]),
        ("item_out", vec![n, h]),
        ("item_bias", vec![n]),
    ];
    if dims.tied_embedding {
        if e != h {
            return Err(BundleError::format(
                path,
                format!("tied_embedding needs embed_dim == hidden, got {e} and {h}"),
            ));
        }
        if bundle.tensors.contains_key("item_in") {
            return Err(BundleError::format(
                path,
                "tied_embedding is set but an item_in tensor is present (tied models use item_out)",
            ));
        }
    } else {
        expected.push(("item_in", vec![n, e]));
    }
    for (name, shape) in expected {
        let Some(t) = bundle.tensors.get(name) else {
            return Err(BundleError::format(
                path,
                format!("missing tensor {name:?}"),
            ));
        };
        if t.shape != shape {
            return Err(BundleError::format(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, dims say {shape:?}",
                    t.shape
                ),
            ));
        }
    }
    Ok(())
}
