//! Which model names, versions and file names are allowed, and how versions are ordered.
//!
//! Each of them becomes one segment of an object path, so they must never be able to climb out of
//! (or into another) model's directory; the allowed set is the same on every object store.

use std::cmp::Ordering;

use super::BundleError;

/// The file holding the current version's name, beside the version directories.
pub(crate) const LATEST: &str = "LATEST";

/// The file naming the canary version, served beside LATEST's to a share of sessions by servers
/// started with `--canary-fraction`; absent when no canary runs.
pub(crate) const CANARY: &str = "CANARY";

/// Model names: `[A-Za-z0-9._-]+`, not `.` or `..`.
pub fn validate_model_name(name: &str) -> Result<(), BundleError> {
    validate_segment("model name", name)
}

/// Versions follow the model-name rules (what `write_bundle` assigns always does), and cannot be
/// `LATEST` or `CANARY`, whose names are taken by the pointer files.
pub fn validate_version(version: &str) -> Result<(), BundleError> {
    validate_segment("version", version)?;
    if version == LATEST || version == CANARY {
        return Err(invalid(
            "version",
            version,
            "LATEST and CANARY are the pointer files' names",
        ));
    }
    Ok(())
}

/// File names listed in a manifest: one segment within the version directory.
pub(crate) fn validate_file_name(file: &str) -> Result<(), BundleError> {
    validate_segment("file name", file)
}

fn validate_segment(what: &'static str, value: &str) -> Result<(), BundleError> {
    if value.is_empty() {
        return Err(invalid(what, value, "must not be empty"));
    }
    if value.contains('/') {
        return Err(invalid(what, value, "must not contain '/'"));
    }
    if value.contains("..") || value == "." {
        return Err(invalid(what, value, "must not be '.' or contain '..'"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            what,
            value,
            "allowed characters are A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(())
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> BundleError {
    BundleError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// The version `write_bundle` tries as its `attempt`-th choice (1-based): the timestamp itself, then
/// `<stamp>-2`, `<stamp>-3`, ... for bundles written within the same millisecond.
pub(crate) fn candidate_version(stamp: &str, attempt: u32) -> String {
    if attempt <= 1 {
        stamp.to_owned()
    } else {
        format!("{stamp}-{attempt}")
    }
}

/// Orders versions as written: by timestamp, then by numeric suffix (`X` < `X-2` < `X-10`), which
/// plain string order gets wrong for suffixes of 10 and more.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_base, a_n) = split_suffix(a);
    let (b_base, b_n) = split_suffix(b);
    a_base.cmp(b_base).then(a_n.cmp(&b_n)).then(a.cmp(b))
}

fn split_suffix(version: &str) -> (&str, u64) {
    if let Some((base, n)) = version.rsplit_once('-')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = n.parse()
    {
        return (base, n);
    }
    (version, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["gru4rec", "shop.eu-1", "A_b-9", "x"] {
            validate_model_name(name).unwrap();
        }
        validate_version("20261126T101500123Z-2").unwrap();
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in [
            "", ".", "..", "a/b", "a..b", "../x", "sp ace", "ü", "a\\b", "a\0",
        ] {
            let err = validate_model_name(name).unwrap_err();
            assert!(
                matches!(err, BundleError::InvalidName { .. }),
                "{name:?}: {err}"
            );
        }
        assert!(validate_version("LATEST").is_err());
        assert!(validate_version("CANARY").is_err());
        assert!(validate_version("v/1").is_err());
        assert!(validate_file_name("../weights").is_err());
    }

    #[test]
    fn versions_order_by_time_then_suffix() {
        let mut v = vec![
            "20261126T101500123Z-10",
            "20261126T101500124Z",
            "20261126T101500123Z-2",
            "20261126T101500123Z",
            "20251126T101500123Z",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            [
                "20251126T101500123Z",
                "20261126T101500123Z",
                "20261126T101500123Z-2",
                "20261126T101500123Z-10",
                "20261126T101500124Z",
            ]
        );
        assert_eq!(candidate_version("S", 1), "S");
        assert_eq!(candidate_version("S", 3), "S-3");
    }
}
