//! The request conversions, reachable from the fuzz targets in `fuzz/` (they sit outside this crate
//! and `convert` is private): not an API, hidden from the docs and free to change with `convert`.

pub use crate::convert::{
    deadline, event_ack, event_request, model_info, recommend_request, recommend_response,
    score_request, score_response, session_info,
};
