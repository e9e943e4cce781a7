//! lambdarec end-to-end tests: see tests/*.rs
