//! KPL de-aggregation against an independent implementation: the vectors in
//! `tests/fixtures/kpl/vectors.json` were made by AWS's `aws_kinesis_agg` Python package (see
//! `tests/fixtures/kpl/generate.py`), and this checks `kcl_core::aggregation` unpacks them
//! exactly as expected, delivers corrupt records whole without panicking, counts them, and
//! that its own `aggregate` round-trips through `deaggregate` for arbitrary inputs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kcl_core::aggregation::{
    aggregate, deaggregate, deaggregate_batch, Deaggregated, MisplacedKplRecords, DEAGGREGATION_FAILURES,
    MAGIC,
};
use kcl_core::{HashKeyRange, Record, SequenceNumber};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use serde_json::Value;

/// Decodes standard base64 (with padding), all the fixture uses.
fn base64(s: &str) -> Vec<u8> {
    fn value(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    }
    let s = s.as_bytes();
    assert_eq!(s.len() % 4, 0, "base64 length");
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let n = chunk[..4 - pad]
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

struct Vector {
    name: String,
    data: Bytes,
    partition_key: String,
    explicit_hash_key: Option<String>,
    /// (partition key, explicit hash key, sub-sequence number, data)
    expected: Vec<(String, Option<String>, u64, Vec<u8>)>,
    aggregated: bool,
    counts_failure: bool,
    made_by_library: bool,
}

fn text(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {v}"))
        .to_owned()
}

fn optional_text(v: &Value, field: &str) -> Option<String> {
    v[field].as_str().map(str::to_owned)
}

fn load() -> (SequenceNumber, Vec<Vector>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kpl/vectors.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).expect(path)).expect("JSON");
    let sequence_number = SequenceNumber::new(file["sequence_number"].as_str().unwrap()).unwrap();
    let vectors = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Vector {
            name: text(v, "name"),
            data: base64(&text(v, "data")).into(),
            partition_key: text(v, "partition_key"),
            explicit_hash_key: optional_text(v, "explicit_hash_key"),
            expected: v["expected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        text(e, "partition_key"),
                        optional_text(e, "explicit_hash_key"),
                        e["sub_sequence_number"].as_u64().unwrap(),
                        base64(&text(e, "data")),
                    )
                })
                .collect(),
            aggregated: v["aggregated"].as_bool().unwrap(),
            counts_failure: v["counts_failure"].as_bool().unwrap(),
            made_by_library: text(v, "made_by") == "aws_kinesis_agg",
        })
        .collect();
    (sequence_number, vectors)
}

fn outer(sequence_number: &SequenceNumber, v: &Vector) -> Record {
    Record {
        data: v.data.clone(),
        partition_key: Arc::from(v.partition_key.as_str()),
        sequence_number: sequence_number.clone(),
        sub_sequence_number: 0,
        approximate_arrival_timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        explicit_hash_key: v.explicit_hash_key.clone(),
    }
}

fn failures(snapshotter: &metrics_util::debugging::Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == DEAGGREGATION_FAILURES)
        .map(|(.., value)| match value {
            DebugValue::Counter(c) => c,
            other => panic!("{DEAGGREGATION_FAILURES} is not a counter: {other:?}"),
        })
        .sum()
}

#[test]
fn vectors_deaggregate_as_the_reference_implementation_does() {
    let (sequence_number, vectors) = load();
    assert!(vectors.len() >= 20, "{} vectors", vectors.len());
    assert_eq!(DEAGGREGATION_FAILURES, "KplDeaggregationFailures");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (mut counted, mut expected_counted) = (0, 0);
    for v in &vectors {
        let input = outer(&sequence_number, v);
        let result = metrics::with_local_recorder(&recorder, || deaggregate(input.clone()));
        let name = &v.name;
        match (&result, v.aggregated, v.counts_failure) {
            (Deaggregated::Aggregated(_), true, false) => {}
            (Deaggregated::Plain(_), false, false) => {}
            (Deaggregated::Corrupt { .. }, false, true) => expected_counted += 1,
            _ => panic!("{name}: unexpected kind: {result:?}"),
        }
        counted += failures(&snapshotter); // a snapshot takes the counter's increments since the last one
        assert_eq!(counted, expected_counted, "{name}: failure counter");

        let got = result.into_records();
        if !v.aggregated {
            assert_eq!(got, vec![input.clone()], "{name}: not delivered unchanged");
        }
        let got_fields: Vec<_> = got
            .iter()
            .map(|r| {
                (
                    r.partition_key.to_string(),
                    r.explicit_hash_key.clone(),
                    r.sub_sequence_number,
                    r.data.to_vec(),
                )
            })
            .collect();
        assert_eq!(got_fields, v.expected, "{name}");
        for r in &got {
            assert_eq!(r.sequence_number, input.sequence_number, "{name}");
            assert_eq!(
                r.approximate_arrival_timestamp, input.approximate_arrival_timestamp,
                "{name}"
            );
        }
    }
    assert!(counted >= 8, "only {counted} corrupt vectors");
}

#[test]
fn aggregate_matches_the_reference_aggregator_byte_for_byte() {
    let (_, vectors) = load();
    let mut compared = 0;
    for v in vectors.iter().filter(|v| v.made_by_library) {
        let records: Vec<(&str, Option<&str>, &[u8])> = v
            .expected
            .iter()
            .map(|(pk, ehk, _, data)| (pk.as_str(), ehk.as_deref(), data.as_slice()))
            .collect();
        assert_eq!(aggregate(&records), v.data, "{}", v.name);
        compared += 1;
    }
    assert!(compared >= 7, "{compared}");
}

#[test]
fn corrupt_vectors_never_panic_when_cut_anywhere() {
    // Every prefix of every aggregate, and every single-byte flip of a small one: delivered as
    // the original record or as user records, never a panic.
    let (sequence_number, vectors) = load();
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        for v in vectors
            .iter()
            .filter(|v| v.data.starts_with(&MAGIC) && v.data.len() < 10_000)
        {
            let base = outer(&sequence_number, v);
            for cut in 0..v.data.len() {
                let r = Record {
                    data: v.data.slice(..cut),
                    ..base.clone()
                };
                let out = deaggregate(r.clone());
                if !out.is_aggregated() {
                    assert_eq!(out.into_records(), vec![r]);
                }
            }
            for i in 0..v.data.len().min(200) {
                let mut data = v.data.to_vec();
                data[i] ^= 0x5a;
                let r = Record {
                    data: data.into(),
                    ..base.clone()
                };
                let out = deaggregate(r.clone());
                if !out.is_aggregated() {
                    assert_eq!(out.into_records(), vec![r]);
                }
            }
        }
    });
}

#[test]
fn hash_range_filter_on_a_vector() {
    let (sequence_number, vectors) = load();
    let v = vectors.iter().find(|v| v.name == "explicit_hash_keys").unwrap();
    let plain = vectors.iter().find(|v| v.name == "plain_text").unwrap();
    let batch = vec![outer(&sequence_number, v), outer(&sequence_number, plain)];
    // Its user records' explicit hash keys are 0, 2^128-1, 0 and 2^127: only the full range
    // holds them all.
    let all = deaggregate_batch(
        batch.clone(),
        Some(&HashKeyRange::FULL),
        MisplacedKplRecords::DropAggregate,
    );
    assert_eq!((all.records.len(), all.misplaced), (v.expected.len() + 1, 0));
    for (range, misplaced) in [
        (HashKeyRange::new(0, u128::MAX / 2).unwrap(), 2),
        (HashKeyRange::new(1, u128::MAX).unwrap(), 2),
    ] {
        let kept = deaggregate_batch(batch.clone(), Some(&range), MisplacedKplRecords::DropAggregate);
        assert_eq!(kept.records, vec![outer(&sequence_number, plain)], "{range}");
        assert_eq!(kept.misplaced, misplaced, "{range}");
        // The default delivers every user record.
        let all = deaggregate_batch(batch.clone(), Some(&range), MisplacedKplRecords::Deliver);
        assert_eq!(all.records.len(), v.expected.len() + 1, "{range}");
    }
}

fn user_records() -> impl Strategy<Value = Vec<(String, Option<String>, Vec<u8>)>> {
    let keys = prop::collection::vec("\\PC{1,12}", 1..6);
    let hash_keys = prop::collection::vec(any::<u128>().prop_map(|k| k.to_string()), 1..4);
    (keys, hash_keys).prop_flat_map(|(keys, hash_keys)| {
        let one = (
            prop::sample::select(keys),
            prop::option::of(prop::sample::select(hash_keys)),
            prop::collection::vec(any::<u8>(), 0..64),
        );
        prop::collection::vec(one, 1..40)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn aggregate_then_deaggregate_is_the_identity(records in user_records(), seq in 0u64..u64::MAX) {
        let refs: Vec<(&str, Option<&str>, &[u8])> = records
            .iter()
            .map(|(pk, ehk, data)| (pk.as_str(), ehk.as_deref(), data.as_slice()))
            .collect();
        let outer = Record {
            data: aggregate(&refs),
            partition_key: Arc::from("outer"),
            sequence_number: SequenceNumber::new(&seq.to_string()).unwrap(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: SystemTime::UNIX_EPOCH,
            explicit_hash_key: None,
        };
        let out = deaggregate(outer.clone());
        prop_assert!(out.is_aggregated());
        let got: Vec<_> = out
            .into_records()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                assert_eq!(r.sub_sequence_number, i as u64);
                assert_eq!(&r.sequence_number, &outer.sequence_number);
                (r.partition_key.to_string(), r.explicit_hash_key, r.data.to_vec())
            })
            .collect();
        prop_assert_eq!(got, records);
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&body);
        let r = Record {
            data: data.into(),
            partition_key: Arc::from("p"),
            sequence_number: SequenceNumber::new("1").unwrap(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: SystemTime::UNIX_EPOCH,
            explicit_hash_key: None,
        };
        // Random bytes almost never carry a matching digest: delivered whole.
        prop_assert_eq!(deaggregate(r.clone()).into_records(), vec![r]);
    }
}
