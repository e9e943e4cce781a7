//! The small tokio runtime a [`super::JetStreamLog`] owns, so that the synchronous [`crate::EventLog`]
//! trait can drive the async NATS client from any thread, inside another runtime included.

use std::future::Future;
use std::io;

/// One worker thread for the client's connection task; callers' futures run on the calling thread.
pub struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub fn new() -> io::Result<Runtime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lambdarec-nats")
            .enable_all()
            .build()?;
        Ok(Runtime(Some(rt)))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until drop")
    }

    /// Runs `fut` to completion on this runtime. Inside another runtime (a `#[tokio::test]`, an
    /// async caller), where blocking on a runtime panics, it runs on a short-lived thread of its own.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt();
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(fut);
        }
        std::thread::scope(|s| {
            s.spawn(move || rt.block_on(fut))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `fut` in the background (nothing waits for it; it is dropped at shutdown).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.rt().spawn(fut));
    }
}

impl Drop for Runtime {
    /// `shutdown_background` never blocks, so a log may be dropped anywhere, inside another runtime
    /// included (dropping a runtime there the ordinary way panics).
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_outside_any_runtime() {
        let rt = Runtime::new().unwrap();
        assert_eq!(rt.block_on(async { 7 }), 7);
    }

    #[tokio::test]
    async fn runs_and_drops_inside_another_runtime() {
        let rt = Runtime::new().unwrap();
        let slept = rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            "done"
        });
        assert_eq!(slept, "done");
        rt.spawn(async {});
        drop(rt);
    }
}
