//! The embedded log's on-disk format: the segment header, frames (one per append call) and their
//! validation, kept free of I/O so that recovery, readers and tests share one definition.
//!
//! A segment is `SEGMENT_MAGIC` followed by frames. A frame, all integers little-endian:
//!
//! | bytes | field                                                     |
//! |-------|-----------------------------------------------------------|
//! | 4     | sync magic `FRAME_MAGIC`                                  |
//! | 4     | CRC32C of the 20 header bytes that follow                 |
//! | 4     | payload length                                            |
//! | 4     | CRC32C of the payload                                     |
//! | 8     | base position (the position of the frame's first record)  |
//! | 4     | record count (≥ 1)                                        |
//! | n     | payload: per record a u32 length and the protobuf bytes   |
//!
//! The header has a CRC of its own so that a damaged length field is seen as damage, not taken for a
//! frame that was cut short by a crash (which recovery would silently cut).

use crate::{LogError, LogRecord, Position, Result};

/// The first 8 bytes of every segment: "lambdarec log", format version 1.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LRECLOG\x01";
pub const SEGMENT_HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
/// Marks the start of a frame ("LRFB" read as little-endian bytes); recovery scans for it.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"LRFB");
pub const FRAME_HEADER_LEN: usize = 28;
/// The largest single record accepted: far above any real event, low enough that a record can
/// never come near the u32 payload length of a frame.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// A frame header that passed its magic and CRC checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub payload_crc: u32,
    pub base: Position,
    pub count: u32,
}

impl FrameHeader {
    /// Header and payload bytes.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// The position after the frame's last record.
    pub fn end(&self) -> Position {
        self.base + u64::from(self.count)
    }

    /// Parses and checks a header: sync magic, header CRC, a non-zero count.
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, &'static str> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(0) != FRAME_MAGIC {
            return Err("no frame sync marker");
        }
        if crc32c::crc32c(&bytes[8..]) != u32_at(4) {
            return Err("frame header checksum mismatch");
        }
        let header = FrameHeader {
            payload_len: u32_at(8),
            payload_crc: u32_at(12),
            base: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            count: u32_at(24),
        };
        if header.count == 0 || header.base == 0 {
            return Err("frame header holds no records or position 0");
        }
        // Every record's position, and the one after the last, must be a position (found by
        // fuzzing: a base near u64::MAX overflowed the reader's arithmetic).
        if header.base.checked_add(u64::from(header.count)).is_none() {
            return Err("frame positions run past the largest position");
        }
        Ok(header)
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[16..24].copy_from_slice(&self.base.to_le_bytes());
        out[24..28].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..FRAME_HEADER_LEN]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Writes one frame holding `records` (positions from `base`) into `buf`, replacing its contents.
/// Refuses an empty batch, a record above [`MAX_RECORD_BYTES`] and a payload beyond `u32::MAX`.
pub fn encode_frame(buf: &mut Vec<u8>, base: Position, records: &[LogRecord]) -> Result<()> {
    assert!(!records.is_empty(), "callers skip empty appends");
    buf.clear();
    buf.resize(FRAME_HEADER_LEN, 0);
    for record in records {
        let len = prost::Message::encoded_len(record);
        if len > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge {
                bytes: len,
                max: MAX_RECORD_BYTES,
            });
        }
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        prost::Message::encode(record, buf).expect("a Vec grows as needed");
    }
    let payload = &buf[FRAME_HEADER_LEN..];
    let too_large = || LogError::TooLarge {
        bytes: payload.len(),
        max: u32::MAX as usize,
    };
    let header = FrameHeader {
        payload_len: u32::try_from(payload.len()).map_err(|_| too_large())?,
        payload_crc: crc32c::crc32c(payload),
        base,
        count: u32::try_from(records.len()).map_err(|_| too_large())?,
    };
    header.write(&mut buf[..FRAME_HEADER_LEN]);
    Ok(())
}

/// Checks a frame's payload against its header: CRC, and exactly `count` length-prefixed records
/// filling it.
pub fn check_payload(header: &FrameHeader, payload: &[u8]) -> Result<(), String> {
    if crc32c::crc32c(payload) != header.payload_crc {
        return Err("frame payload checksum mismatch".to_string());
    }
    let mut records = Records { rest: payload };
    for i in 0..header.count {
        if records.next().is_none() {
            return Err(format!(
                "frame payload holds {i} records, its header says {}",
                header.count
            ));
        }
    }
    if !records.rest.is_empty() {
        return Err(format!(
            "{} bytes after the frame's last record",
            records.rest.len()
        ));
    }
    Ok(())
}

/// The records of a payload that passed [`check_payload`], as encoded bytes.
pub fn records(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    Records { rest: payload }
}

struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.rest.get(..4)?.try_into().ok()?) as usize;
        let record = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some(record)
    }
}

/// How a scan of one segment's frames ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The file ends inside the frame starting at `offset` (a write cut short by a crash).
    Incomplete { offset: u64 },
    /// The frame at `offset` fails a check (checksum, structure).
    Invalid { offset: u64, reason: String },
    /// A frame that validates but does not continue the positions: never a torn write.
    Gap { offset: u64, reason: String },
}

/// What a scan of one segment found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Byte offset just after the last valid frame.
    pub valid_end: u64,
    /// The position after the last valid frame's records (`first` when there is none).
    pub next: Position,
    /// Why the scan stopped before the end of the data, if it did.
    pub stop: Option<Stop>,
}

/// Validates the frames of a whole segment (`data` includes its header) whose first record is at
/// `first`.
pub fn scan_segment(data: &[u8], first: Position) -> Scan {
    let mut offset = SEGMENT_HEADER_LEN as usize;
    let mut next = first;
    let stop = loop {
        if offset == data.len() {
            break None;
        }
        let Some(head) = data.get(offset..offset + FRAME_HEADER_LEN) else {
            break Some(Stop::Incomplete {
                offset: offset as u64,
            });
        };
        let header = match FrameHeader::parse(head.try_into().expect("header length")) {
            Ok(h) => h,
            Err(reason) => {
                let reason = reason.to_string();
                break Some(Stop::Invalid {
                    offset: offset as u64,
                    reason,
                });
            }
        };
        let end = offset as u64 + header.frame_len();
        if end > data.len() as u64 {
            break Some(Stop::Incomplete {
                offset: offset as u64,
            });
        }
        let payload = &data[offset + FRAME_HEADER_LEN..end as usize];
        if let Err(reason) = check_payload(&header, payload) {
            break Some(Stop::Invalid {
                offset: offset as u64,
                reason,
            });
        }
        if header.base != next {
            let reason = format!(
                "frame holds positions from {}, expected {next}",
                header.base
            );
            break Some(Stop::Gap {
                offset: offset as u64,
                reason,
            });
        }
        next = header.end();
        offset = end as usize;
    };
    Scan {
        valid_end: offset as u64,
        next,
        stop,
    }
}

/// The offset of the first frame header at or after `from` whose sync marker and header CRC check
/// out: evidence that data written after a damaged frame exists.
pub fn find_valid_header(data: &[u8], from: usize) -> Option<usize> {
    let marker = FRAME_MAGIC.to_le_bytes();
    (from..data.len().saturating_sub(FRAME_HEADER_LEN - 1)).find(|&i| {
        data[i..i + 4] == marker
            && FrameHeader::parse(data[i..i + FRAME_HEADER_LEN].try_into().expect("length")).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_records;

    fn segment(frames: &[(Position, usize)]) -> Vec<u8> {
        let mut data = SEGMENT_MAGIC.to_vec();
        let mut buf = Vec::new();
        for &(base, n) in frames {
            encode_frame(&mut buf, base, &sample_records(n, "f")).unwrap();
            data.extend_from_slice(&buf);
        }
        data
    }

    #[test]
    fn frames_round_trip() {
        let records = sample_records(5, "rt");
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &records).unwrap();
        let header = FrameHeader::parse(buf[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!((header.base, header.count, header.end()), (42, 5, 47));
        assert_eq!(header.frame_len(), buf.len() as u64);
        let payload = &buf[FRAME_HEADER_LEN..];
        check_payload(&header, payload).unwrap();
        let decoded: Vec<_> = records_of(payload);
        assert_eq!(decoded, records);
    }

    fn records_of(payload: &[u8]) -> Vec<LogRecord> {
        records(payload)
            .map(|b| crate::decode(1, b).unwrap())
            .collect()
    }

    #[test]
    fn positions_past_the_largest_are_refused_not_overflowed() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, u64::MAX - 2, &sample_records(3, "max")).unwrap();
        let err = FrameHeader::parse(buf[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap_err();
        assert!(err.contains("past the largest position"), "{err}");
        // Up to the largest position is fine: the end is u64::MAX itself.
        encode_frame(&mut buf, u64::MAX - 3, &sample_records(3, "max")).unwrap();
        let h = FrameHeader::parse(buf[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.end(), u64::MAX);
    }

    #[test]
    fn a_damaged_length_field_fails_the_header_crc() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &sample_records(2, "x")).unwrap();
        buf[9] ^= 0x01; // payload length
        let err = FrameHeader::parse(buf[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap_err();
        assert!(err.contains("header checksum"), "{err}");
    }

    #[test]
    fn scans_report_where_and_why_they_stop() {
        let data = segment(&[(1, 3), (4, 2)]);
        let full = scan_segment(&data, 1);
        assert_eq!(
            (full.next, full.valid_end, full.stop.is_none()),
            (6, data.len() as u64, true)
        );

        let first_end = segment(&[(1, 3)]).len();
        let cut = scan_segment(&data[..data.len() - 1], 1);
        let incomplete = Stop::Incomplete {
            offset: first_end as u64,
        };
        assert_eq!((cut.next, cut.stop), (4, Some(incomplete)));

        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        let bad = scan_segment(&flipped, 1);
        assert!(
            matches!(bad.stop, Some(Stop::Invalid { offset, .. }) if offset == first_end as u64)
        );

        let gap = scan_segment(&segment(&[(1, 3), (5, 2)]), 1);
        assert!(matches!(gap.stop, Some(Stop::Gap { .. })), "{gap:?}");
        assert!(matches!(
            scan_segment(&data, 2).stop,
            Some(Stop::Gap { offset: 8, .. })
        ));
    }

    #[test]
    fn valid_headers_are_found_after_damage() {
        let data = segment(&[(1, 3), (4, 2)]);
        let second = segment(&[(1, 3)]).len();
        assert_eq!(find_valid_header(&data, 9), Some(second));
        assert_eq!(find_valid_header(&data, second + 1), None);
        assert_eq!(find_valid_header(&[0; 100], 0), None);
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = crate::event_record("s", &"i".repeat(MAX_RECORD_BYTES), 1, 2, None, "v");
        let err = encode_frame(&mut Vec::new(), 1, &[big]).unwrap_err();
        assert!(matches!(err, LogError::TooLarge { .. }), "{err}");
    }
}
