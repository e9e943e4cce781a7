//! lambdarec serving and speed layer: the `lambdarec.v1.Recommender` gRPC service over a dynamic
//! batcher that owns the compute backend and the session store, with a model registry that hot-reloads
//! bundles. A library so that tests and benches run the real service in-process.

pub mod archive;
pub mod config;
mod convert;
pub mod device;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod load;
pub mod metrics;
mod net;
pub mod readiness;
pub mod recovery;
pub mod registry;
pub mod security;
mod server;
mod service;
pub mod status;
mod stream;

pub use config::{DeviceChoice, Limits, LogConfig, NewItems, ServeConfig, SpeedConfig};
pub use server::{RunningServer, ServeError, start, start_with_backend};
