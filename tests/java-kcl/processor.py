#!/usr/bin/env python3
"""A MultiLangDaemon record processor for the interoperability tests (tests/tests/java_interop.rs).

The Java KCL (MultiLangDaemon) starts one of these per shard and talks to it over stdin/stdout,
so everything it records goes to another file: KCL_JAVA_RECORDS, one JSON object per line,
appended with a single write() each (several processors share the file).

Events: {"event": "initialize", "shard", "checkpoint", "sub"} once per lease;
{"event": "record", "shard", "seq", "sub", "key", "data"} per record (data as UTF-8 text);
{"event": "checkpoint", "shard", "seq", "sub"} per checkpoint written, with "error" when the
daemon refused it; {"event": "shutdown_requested" | "lease_lost" | "shard_ended", "shard"}.
Every event carries "worker" (KCL_JAVA_WORKER) and "t" (Unix time, seconds).

Checkpoints: after every batch at its last record, at shard end and when shutdown is requested,
except in a shard that delivered a record whose data ends with "#hold": there the checkpoint is
written AT that record (sequence and sub-sequence number, so inside a KPL aggregate when the
record is one) and never again by this process, whatever else it processes. That is how the
tests make the Java KCL leave a checkpoint in the middle of the records it processed.
"""
import json
import os
import sys
import time

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

HOLD_MARKER = b"#hold"
_FD = os.open(os.environ["KCL_JAVA_RECORDS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_WORKER = os.environ.get("KCL_JAVA_WORKER", "java")


def emit(event, **fields):
    fields["event"] = event
    fields["worker"] = _WORKER
    fields["t"] = time.time()
    os.write(_FD, (json.dumps(fields, sort_keys=True) + "\n").encode("utf-8"))


class RecordingProcessor(processor.RecordProcessorBase):
    def __init__(self):
        self.shard = None
        self.held = False

    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id
        emit("initialize", shard=self.shard, checkpoint=initialize_input.sequence_number,
             sub=initialize_input.sub_sequence_number)

    def _checkpoint(self, checkpointer, seq=None, sub=None):
        try:
            checkpointer.checkpoint(seq, sub)
            emit("checkpoint", shard=self.shard, seq=seq, sub=sub)
        except kcl.CheckpointError as e:
            emit("checkpoint", shard=self.shard, seq=seq, sub=sub, error=str(e))

    def process_records(self, process_records_input):
        hold = None
        last = None
        for record in process_records_input.records:
            data = record.binary_data
            emit("record", shard=self.shard, seq=record.sequence_number,
                 sub=record.sub_sequence_number or 0, key=record.partition_key,
                 data=data.decode("utf-8", "replace"))
            last = record
            if not self.held and hold is None and data.endswith(HOLD_MARKER):
                hold = record
        if self.held or last is None:
            return
        if hold is not None:
            self.held = True
            self._checkpoint(process_records_input.checkpointer, hold.sequence_number,
                             hold.sub_sequence_number or 0)
        else:
            self._checkpoint(process_records_input.checkpointer, last.sequence_number,
                             last.sub_sequence_number or 0)

    def lease_lost(self, lease_lost_input):
        emit("lease_lost", shard=self.shard)

    def shard_ended(self, shard_ended_input):
        emit("shard_ended", shard=self.shard)
        self._checkpoint(shard_ended_input.checkpointer)

    def shutdown_requested(self, shutdown_requested_input):
        emit("shutdown_requested", shard=self.shard)
        if not self.held:
            self._checkpoint(shutdown_requested_input.checkpointer)


if __name__ == "__main__":
    kcl.KCLProcess(RecordingProcessor()).run()
