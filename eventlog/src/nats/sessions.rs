//! Reading single sessions from a JetStream log, for replicas: each session's records are the
//! messages on its own subject (`<prefix>.<session_hash>`), fetched one by one (`next_by_subj` from a
//! sequence). A record acknowledged to a client must be visible to the next read, whichever replica
//! makes it: a stream of one replica is read with a direct get (served by the one server that stored
//! it, without the JetStream API's request queue); a replicated stream through the message-get API,
//! which always reaches the stream's leader (a direct get may be answered by a follower that has not
//! caught up). The sessions of one call are read concurrently: a call costs about one round trip per
//! record of the longest session, plus one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind, Stream};
use bytes::Bytes;
use futures::future::try_join_all;

use super::runtime::Runtime;
use super::{NatsLocation, run_bounded};
use crate::{Position, Result, SessionReader, SessionRecords, decode};

pub(super) struct JetStreamSessions {
    pub(super) at: NatsLocation,
    pub(super) stream: Stream,
    pub(super) op_timeout: Duration,
    /// Last: dropped after the client handles above.
    pub(super) rt: Arc<Runtime>,
}

/// The messages on `subject` after `after`: (sequence, payload). `direct`: by direct get.
async fn read_subject(
    stream: &Stream,
    subject: String,
    after: Position,
    direct: bool,
) -> Result<Vec<(Position, Bytes)>, async_nats::Error> {
    let mut out = Vec::new();
    let mut from = after + 1;
    loop {
        let next = if direct {
            match stream
                .direct_get_next_for_subject(subject.clone(), Some(from))
                .await
            {
                Ok(message) => Some(message),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            let get = stream.raw_message_builder().sequence(from);
            match get.next_by_subject(subject.clone()).send().await {
                Ok(message) => Some(message),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(e.into()),
            }
        };
        let Some(message) = next else {
            return Ok(out);
        };
        from = message.sequence + 1;
        out.push((message.sequence, message.payload));
    }
}

impl SessionReader for JetStreamSessions {
    fn records_after(&mut self, queries: &[(&str, Position)]) -> Result<Vec<SessionRecords>> {
        let stream = &self.stream;
        let direct = self.at.replicas == 1;
        let reads = queries
            .iter()
            .map(|&(id, after)| read_subject(stream, self.at.subject(id), after, direct));
        let bound = self.op_timeout;
        let raw = run_bounded(
            &self.rt,
            &self.at,
            bound,
            "reading sessions from",
            async move { try_join_all(reads).await },
        )?;
        // A subject is shared by every session whose id has the same 64-bit hash: keep the asked one.
        raw.into_iter()
            .zip(queries)
            .map(|(messages, &(id, _))| {
                let mut records = Vec::with_capacity(messages.len());
                for (position, payload) in messages {
                    let record = decode(position, &payload)?;
                    if record.session_id == id {
                        records.push((position, record));
                    }
                }
                Ok(records)
            })
            .collect()
    }
}
