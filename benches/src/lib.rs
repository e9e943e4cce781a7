//! lambdarec benchmarks: see benches/*.rs
