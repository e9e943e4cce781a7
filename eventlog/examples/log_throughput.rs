//! Append throughput of an event log: appends/s and records/s for batches of 1, 64 and 1024 records
//! (one append call = one group commit), then the read-back rate.
//!
//! `cargo run --release -p lambdarec-eventlog --example log_throughput -- <--log URL> [seconds]`
//! e.g. `file:///tmp/bench-log` (a fresh directory on the disk to measure) or
//! `nats://127.0.0.1:4222/BENCH`.

use std::time::{Duration, Instant};

use lambdarec_eventlog::conformance::sample_records;
use lambdarec_eventlog::{OpenOptions, open};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: log_throughput <--log URL> [seconds per size]")?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let mut log = open(&url, &OpenOptions::default())?.ok_or("`none` has nothing to measure")?;
    println!("{}", log.describe());
    let start_position = log.bounds()?.next;
    for batch in [1usize, 64, 1024] {
        let records = sample_records(batch, "bench");
        let budget = Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut appends = 0u64;
        while started.elapsed() < budget {
            log.append(&records)?;
            appends += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "batch {batch:>5}: {:>9.0} appends/s {:>10.0} records/s ({appends} appends in {secs:.2} s)",
            appends as f64 / secs,
            (appends * batch as u64) as f64 / secs
        );
    }
    let mut reader = log.reader(start_position)?;
    let started = Instant::now();
    let mut read = 0usize;
    loop {
        let batch = reader.next_batch(4096)?;
        if batch.is_empty() {
            break;
        }
        read += batch.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "read back: {read} records in {secs:.2} s ({:.0} records/s)",
        read as f64 / secs
    );
    println!("stored bytes: {}", log.stored_bytes());
    Ok(())
}
