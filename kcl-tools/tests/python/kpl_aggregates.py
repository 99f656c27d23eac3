"""Builds KPL aggregates with the real `aws_kinesis_agg` package (PyPI) for the kcl-tail test.

Usage: kpl_aggregates.py AGGREGATES RECORDS_PER_AGGREGATE PARTITION_KEYS

Prints one aggregate per line: its partition key, its explicit hash key ("-" if none) and its
data in base64, tab-separated. User record n (0-based over all aggregates) has partition key
"pk-{n % PARTITION_KEYS}" and data "user-{aggregate}-{index}", so the aggregates pack keys that
hash to different shards, as Lambda producers using this package do.
"""

import base64
import sys

from aws_kinesis_agg.aggregator import RecordAggregator


def main() -> None:
    aggregates, per_aggregate, keys = (int(a) for a in sys.argv[1:4])
    aggregator = RecordAggregator()
    n = 0
    for a in range(aggregates):
        for i in range(per_aggregate):
            full = aggregator.add_user_record(f"pk-{n % keys}", f"user-{a}-{i}".encode())
            if full is not None:
                sys.exit(f"aggregate {a} filled up before {per_aggregate} user records")
            n += 1
        record = aggregator.clear_and_get()
        if record.get_num_user_records() != per_aggregate:
            sys.exit(f"aggregate {a} holds {record.get_num_user_records()} user records")
        partition_key, explicit_hash_key, data = record.get_contents()
        print(f"{partition_key}\t{explicit_hash_key or '-'}\t{base64.b64encode(data).decode()}")


if __name__ == "__main__":
    main()
