//! weights.safetensors: named f32 tensors, written as little-endian F32; F16 and BF16 are widened
//! to f32 on read so that a bundle converted offline still loads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors, View};

use super::{BundleError, Tensor};

/// Lends a [`Tensor`] to the safetensors serialiser without building a second `Vec<f32>`.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * size_of::<f32>()
    }
}

/// Serialises `tensors`; `path` only names the file in errors.
pub(crate) fn encode(
    tensors: &BTreeMap<String, Tensor>,
    path: &str,
) -> Result<Vec<u8>, BundleError> {
    for (name, t) in tensors {
        check_len(name, t, path)?;
    }
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), F32View(t))), None).map_err(
        |source| BundleError::Safetensors {
            path: path.to_owned(),
            source,
        },
    )
}

/// Parses a safetensors file into f32 tensors.
pub(crate) fn decode(bytes: &[u8], path: &str) -> Result<BTreeMap<String, Tensor>, BundleError> {
    let st = SafeTensors::deserialize(bytes).map_err(|source| BundleError::Safetensors {
        path: path.to_owned(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(BundleError::format(
                    path,
                    format!("tensor {name:?} has dtype {other:?}; expected F32 (or F16/BF16)"),
                ));
            }
        };
        let tensor = Tensor {
            shape: view.shape().to_vec(),
            data,
        };
        check_len(name, &tensor, path)?;
        out.insert(name.to_owned(), tensor);
    }
    Ok(out)
}

fn check_len(name: &str, t: &Tensor, path: &str) -> Result<(), BundleError> {
    if t.numel() != t.data.len() {
        return Err(BundleError::format(
            path,
            format!(
                "tensor {name:?} has shape {:?} ({} elements) but {} values",
                t.shape,
                t.numel(),
                t.data.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_half_widening() {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a".to_owned(),
            Tensor {
                shape: vec![2, 3],
                data: vec![1.0, -2.5, 3.25, 0.0, 1e-8, -7.0],
            },
        );
        tensors.insert(
            "b.bias".to_owned(),
            Tensor {
                shape: vec![1],
                data: vec![f32::MAX],
            },
        );
        let bytes = encode(&tensors, "w").unwrap();
        assert_eq!(decode(&bytes, "w").unwrap(), tensors);

        let halves: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &halves).unwrap();
        let bytes = safetensors::serialize([("h", view)], None).unwrap();
        assert_eq!(decode(&bytes, "w").unwrap()["h"].data, vec![1.5, -2.0]);
    }

    #[test]
    fn wrong_length_is_a_format_error() {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a".to_owned(),
            Tensor {
                shape: vec![2, 2],
                data: vec![1.0],
            },
        );
        assert!(matches!(
            encode(&tensors, "w"),
            Err(BundleError::Format { .. })
        ));
        assert!(matches!(
            decode(b"garbage", "w"),
            Err(BundleError::Safetensors { .. })
        ));
    }
}
