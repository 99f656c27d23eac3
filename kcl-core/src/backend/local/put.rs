//! Putting records: `PutRecord` and `PutRecords`, their validation (partition key, payload and
//! batch limits, explicit hash keys), and the routing of each record by its hash key to the
//! open shard whose range contains it, where it gets the stream's next sequence number.
//!
//! Validation happens before the lock is taken, so a rejected batch changes nothing (all or
//! nothing, as on Kinesis).

use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;

use super::stream::{sequence_number, Stored, StreamState};
use super::{
    invalid, partition_key_hash, trunc, BackendOp, LocalBackend, MAX_PARTITION_KEY_CHARS, MAX_PUT_RECORDS,
    MAX_PUT_RECORDS_BYTES,
};
use crate::backend::BackendError;
use crate::record::{Record, SequenceNumber};

/// Where [`LocalBackend::put_record`] stored a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The shard the record went to.
    pub shard_id: String,
    /// The record's sequence number.
    pub sequence_number: SequenceNumber,
}

impl LocalBackend {
    /// Puts one record. The hash key is `explicit_hash_key` (a decimal `u128`) if given, else the
    /// MD5 of the partition key read as a big-endian 128-bit number; the record goes to the open
    /// shard whose range contains it.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: Bytes,
        explicit_hash_key: Option<&str>,
    ) -> Result<PutResult, BackendError> {
        self.count(BackendOp::PutRecord);
        self.simulate_latency().await;
        let hash = hash_key(partition_key, explicit_hash_key)?;
        let arrival = SystemTime::now();
        self.with_stream(stream, |s, now| {
            s.check_size(data.len())?;
            s.put(
                partition_key,
                data,
                explicit_hash_key.map(str::to_owned),
                hash,
                now,
                arrival,
            )
        })
        .inspect(|_| self.changed())
    }

    /// Puts several records (at most [`MAX_PUT_RECORDS`], [`MAX_PUT_RECORDS_BYTES`] in all),
    /// each as `(partition_key, data)`. All or nothing: if any record is invalid, none is put.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<PutResult>, BackendError> {
        self.count(BackendOp::PutRecords);
        self.simulate_latency().await;
        if records.is_empty() || records.len() > MAX_PUT_RECORDS {
            return Err(invalid(format!(
                "{} records; a batch holds 1..={MAX_PUT_RECORDS}",
                records.len()
            )));
        }
        let total: usize = records.iter().map(|(pk, data)| pk.len() + data.len()).sum();
        let hashes = records
            .iter()
            .map(|(pk, _)| hash_key(pk, None))
            .collect::<Result<Vec<_>, _>>()?;
        let arrival = SystemTime::now();
        self.with_stream(stream, |s, now| {
            // A batch holds 5 MiB, or one record (with its key) of a stream that accepts larger
            // ones.
            let batch_max = MAX_PUT_RECORDS_BYTES.max(s.max_record_bytes + 4 * MAX_PARTITION_KEY_CHARS);
            if total > batch_max {
                return Err(invalid(format!("batch of {total} bytes exceeds {batch_max}")));
            }
            for (_, data) in &records {
                s.check_size(data.len())?;
            }
            records
                .into_iter()
                .zip(hashes)
                .map(|((pk, data), hash)| s.put(&pk, data, None, hash, now, arrival))
                .collect()
        })
        .inspect(|_| self.changed())
    }
}

impl StreamState {
    /// A record of `len` payload bytes fits this stream.
    fn check_size(&self, len: usize) -> Result<(), BackendError> {
        if len > self.max_record_bytes {
            return Err(invalid(format!(
                "record of {len} bytes exceeds the stream's maximum record size of {} bytes",
                self.max_record_bytes
            )));
        }
        Ok(())
    }

    fn put(
        &mut self,
        partition_key: &str,
        data: Bytes,
        explicit_hash_key: Option<String>,
        hash: u128,
        now: Instant,
        arrival: SystemTime,
    ) -> Result<PutResult, BackendError> {
        self.put_with(partition_key, explicit_hash_key, hash, now, arrival, |_| data)
    }

    /// Appends a record to the open shard serving `hash`, its payload made by `data` from the
    /// sequence number it gets (a change record carries its own).
    pub(super) fn put_with(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<String>,
        hash: u128,
        now: Instant,
        arrival: SystemTime,
        data: impl FnOnce(&SequenceNumber) -> Bytes,
    ) -> Result<PutResult, BackendError> {
        let retention = self.retention;
        let counter = self.next_seq;
        let shard = self
            .shards
            .values_mut()
            .find(|s| s.end.is_none() && s.shard.hash_key_range.contains(hash))
            .ok_or_else(|| BackendError::other(format!("no open shard serves hash key {hash}")))?;
        shard.trim(now, retention);
        let sequence = sequence_number(counter);
        let data = data(&sequence);
        let size = data.len();
        shard.records.push_back(Stored {
            counter,
            arrived: now,
            size,
            record: Record {
                data,
                partition_key: partition_key.into(),
                sequence_number: sequence.clone(),
                sub_sequence_number: 0,
                approximate_arrival_timestamp: arrival,
                explicit_hash_key,
            },
        });
        self.next_seq += 1;
        Ok(PutResult {
            shard_id: shard.shard.shard_id.clone(),
            sequence_number: sequence,
        })
    }
}

/// Validates a record's keys and computes its hash key (the size is checked against the
/// stream's maximum when it is put).
fn hash_key(partition_key: &str, explicit_hash_key: Option<&str>) -> Result<u128, BackendError> {
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(invalid(format!(
            "partition key of {chars} characters; 1..={MAX_PARTITION_KEY_CHARS} allowed"
        )));
    }
    match explicit_hash_key {
        None => Ok(partition_key_hash(partition_key)),
        Some(key) => {
            let bad = || {
                invalid(format!(
                    "explicit hash key {:?} is not a decimal 128-bit number",
                    trunc(key)
                ))
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            key.parse::<u128>().map_err(|_| bad())
        }
    }
}
#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::testing::{backend, put, read_all, shard_id, S};
    use crate::backend::local::{MAX_LARGE_RECORD_BYTES, MAX_RECORD_BYTES};
    use crate::backend::IteratorPosition;

    #[tokio::test]
    async fn routes_by_md5_of_the_partition_key() {
        let b = backend(4);
        assert_eq!(partition_key_hash("a"), 0x0cc175b9c0f1b6a831c399e269772661);
        assert_eq!(put(&b, "a", "x").await.shard_id, shard_id(0));
        let high = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_key_hash(k) >> 120 >= 0xc0)
            .unwrap();
        assert_eq!(put(&b, &high, "y").await.shard_id, shard_id(3));
        // An explicit hash key overrides the partition key.
        let r = b
            .put_record(S, "a", Bytes::new(), Some(&(2u128 << 126).to_string()))
            .await
            .unwrap();
        assert_eq!(r.shard_id, shard_id(2));
        let out = read_all(&b, &shard_id(2), IteratorPosition::TrimHorizon).await;
        assert_eq!(
            out.records[0].explicit_hash_key.as_deref(),
            Some("170141183460469231731687303715884105728")
        );
        assert_eq!(b.record_count(S).unwrap(), 3);
    }

    #[tokio::test]
    async fn a_stream_takes_records_up_to_its_maximum_record_size() {
        let b = backend(1);
        let mib = 1024 * 1024;
        assert_eq!(b.max_record_size(S).unwrap(), MAX_RECORD_BYTES);
        let big = || Bytes::from(vec![7; 10 * mib]);
        assert!(matches!(
            b.put_record(S, "k", big(), None).await,
            Err(BackendError::InvalidArgument(_))
        ));
        for kib in [0, 1023, 10241] {
            assert!(matches!(
                b.update_max_record_size(S, kib),
                Err(BackendError::InvalidArgument(_))
            ));
        }
        b.update_max_record_size(S, 10240).unwrap();
        assert_eq!(b.max_record_size(S).unwrap(), MAX_LARGE_RECORD_BYTES);
        b.put_record(S, "k", big(), None).await.unwrap();
        // One large record per batch; two are too many.
        b.put_records(S, vec![("k".into(), big())]).await.unwrap();
        assert!(b
            .put_records(S, vec![("k".into(), big()), ("k".into(), big())])
            .await
            .is_err());
        assert!(b
            .put_record(S, "k", Bytes::from(vec![0; MAX_LARGE_RECORD_BYTES + 1]), None)
            .await
            .is_err());
        assert!(matches!(
            b.update_max_record_size("nope", 2048),
            Err(BackendError::StreamNotFound(_))
        ));
    }

    #[tokio::test]
    async fn puts_are_validated_like_kinesis() {
        let b = backend(1);
        let bad = |r: Result<PutResult, BackendError>| matches!(r, Err(BackendError::InvalidArgument(_)));
        assert!(bad(b.put_record(S, "", Bytes::new(), None).await));
        assert!(bad(b.put_record(S, &"k".repeat(257), Bytes::new(), None).await));
        assert!(b
            .put_record(S, &"é".repeat(256), Bytes::new(), None)
            .await
            .is_ok());
        assert!(bad(b
            .put_record(S, "k", Bytes::from(vec![0; MAX_RECORD_BYTES + 1]), None)
            .await));
        assert!(b
            .put_record(S, "k", Bytes::from(vec![0; MAX_RECORD_BYTES]), None)
            .await
            .is_ok());
        assert!(bad(b.put_record(S, "k", Bytes::new(), Some("-1")).await));
        assert!(bad(b
            .put_record(S, "k", Bytes::new(), Some(&format!("{}0", u128::MAX)))
            .await));
        assert!(matches!(
            b.put_record("nope", "k", Bytes::new(), None).await,
            Err(BackendError::StreamNotFound(_))
        ));
        // All or nothing.
        let batch = vec![("a".to_owned(), Bytes::new()), (String::new(), Bytes::new())];
        assert!(matches!(
            b.put_records(S, batch).await,
            Err(BackendError::InvalidArgument(_))
        ));
        assert_eq!(b.record_count(S).unwrap(), 2);
        let batch = (0..10).map(|i| (format!("k{i}"), Bytes::from(vec![i]))).collect();
        let results = b.put_records(S, batch).await.unwrap();
        assert_eq!(results.len(), 10);
        assert!(results
            .windows(2)
            .all(|w| w[0].sequence_number < w[1].sequence_number));
        assert_eq!(b.op_count(BackendOp::PutRecords), 2);
        assert_eq!(b.op_count(BackendOp::PutRecord), 8);
    }
}
