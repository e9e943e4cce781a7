//! Reading a JetStream log: an ephemeral pull consumer (no acks) from the reader's position, fetched
//! with `no_wait`, so that a batch is what the stream holds at the time of the call and an empty batch
//! means caught up (checked against the stream's state). After any error the consumer is dropped and the next call recreates it at the
//! reader's position, so a fetch that failed half-way loses nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;

use super::runtime::Runtime;
use super::{NatsLocation, run_bounded};
use crate::{LogError, LogReader, LogRecord, Position, Result, decode};

/// The most records one fetch asks for.
const MAX_FETCH: usize = 10_000;
/// An idle reader's consumer is deleted by the server after this; the reader then recreates it.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

pub struct JetStreamReader {
    at: NatsLocation,
    stream: Stream,
    op_timeout: Duration,
    next: Position,
    consumer: Option<PullConsumer>,
    /// Last: dropped after the client handles above.
    rt: Arc<Runtime>,
}

impl JetStreamReader {
    pub fn new(
        rt: Arc<Runtime>,
        at: NatsLocation,
        stream: Stream,
        from: Position,
        op_timeout: Duration,
    ) -> Self {
        JetStreamReader {
            at,
            stream,
            op_timeout,
            next: from,
            consumer: None,
            rt,
        }
    }
}

/// What one fetch produced: records, or the stream's first position when records below it that the
/// reader needed have been purged.
enum Fetched {
    Records(Vec<(Position, LogRecord)>),
    Released(Position),
}

/// Up to `max` records from `from`. An empty fetch is checked against the stream's state: a
/// consumer learns of new messages shortly after they are acknowledged, so when the stream already
/// holds records at `from` the fetch is repeated until they come (within the caller's bound). An
/// empty result therefore means the reader has caught up with what was stored at the time of the
/// call.
async fn fetch(
    stream: &Stream,
    consumer: &mut Option<PullConsumer>,
    from: Position,
    max: usize,
) -> Result<Result<Fetched, LogError>, async_nats::Error> {
    loop {
        match fetch_once(stream, consumer, from, max).await? {
            Ok(Fetched::Records(records)) if records.is_empty() => {}
            other => return Ok(other),
        }
        let state = stream.get_info().await?.state;
        if state.messages == 0 || state.last_sequence < from {
            return Ok(Ok(Fetched::Records(Vec::new())));
        }
        if state.first_sequence > from {
            return Ok(Ok(Fetched::Released(state.first_sequence)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn fetch_once(
    stream: &Stream,
    consumer: &mut Option<PullConsumer>,
    from: Position,
    max: usize,
) -> Result<Result<Fetched, LogError>, async_nats::Error> {
    if consumer.is_none() {
        // No subject filter: the stream holds only the log's subjects, and a reader that sees
        // every message can tell from the stream's state whether it has caught up.
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        *consumer = Some(stream.create_consumer(config).await?);
    }
    let consumer = consumer.as_ref().expect("just created");
    let mut batch = consumer.fetch().max_messages(max).messages().await?;
    let mut out = Vec::new();
    let mut next = from;
    while let Some(message) = batch.next().await {
        let message = message?;
        let position = message.info()?.stream_sequence;
        if position < next {
            continue; // already handed out
        }
        if position > next {
            // Sequences are dense in a log stream unless its head was purged under the reader.
            let first = stream.get_info().await?.state.first_sequence;
            if first > next {
                return Ok(Ok(Fetched::Released(first)));
            }
        }
        match decode(position, &message.payload) {
            Ok(record) => out.push((position, record)),
            Err(e) => return Ok(Err(e)),
        }
        next = position + 1;
    }
    Ok(Ok(Fetched::Records(out)))
}

impl LogReader for JetStreamReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<(Position, LogRecord)>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let fut = fetch(
            &self.stream,
            &mut self.consumer,
            self.next,
            max.min(MAX_FETCH),
        );
        let fetched = run_bounded(&self.rt, &self.at, self.op_timeout, "reading", fut);
        let fetched = match fetched.and_then(|inner| inner) {
            Ok(f) => f,
            Err(e) => {
                // Whatever the consumer delivered after the last record returned is lost to it.
                self.consumer = None;
                return Err(e);
            }
        };
        match fetched {
            Fetched::Records(records) => {
                if let Some(&(last, _)) = records.last() {
                    self.next = last + 1;
                }
                Ok(records)
            }
            Fetched::Released(first) => {
                self.consumer = None;
                Err(LogError::Released {
                    requested: self.next,
                    first,
                })
            }
        }
    }
}

impl Drop for JetStreamReader {
    /// Deletes the consumer in the background; if that never happens, the server removes it once it
    /// has been idle for [`INACTIVE_THRESHOLD`].
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let name = consumer.cached_info().name.clone();
            let stream = self.stream.clone();
            self.rt.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}
