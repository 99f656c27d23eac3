#!/usr/bin/env node
// An aws-kcl (Node.js) record processor for the kcl-multilang tests
// (kcl-tools/tests/kcl_multilang.rs), written as any aws-kcl application is: it knows
// nothing about kcl-multilang. It records what it sees in the same format as
// tests/java-kcl/processor.py, one JSON object per line appended to KCL_JAVA_RECORDS:
// {"event": "initialize" | "record" | "checkpoint" | "lease_lost" | "shard_ended" |
//  "shutdown_requested", "shard", ...}. It checkpoints after every batch at its last record
// (aws-kcl sends the sequence number only), at shard end and when shutdown is requested.
'use strict';

const fs = require('fs');
const kcl = require('aws-kcl');

const fd = fs.openSync(process.env.KCL_JAVA_RECORDS, 'a');
const worker = process.env.KCL_JAVA_WORKER || 'node';

function emit(event, fields) {
  fields.event = event;
  fields.worker = worker;
  fields.t = Date.now() / 1000;
  fs.writeSync(fd, JSON.stringify(fields) + '\n');
}

function recordingProcessor() {
  let shard = null;
  const checkpoint = (checkpointer, seq, done) => {
    const after = (err) => {
      const fields = { shard: shard, seq: seq, sub: null };
      if (err) {
        fields.error = String(err);
      }
      emit('checkpoint', fields);
      done();
    };
    if (seq === null) {
      checkpointer.checkpoint(after);
    } else {
      checkpointer.checkpoint(seq, after);
    }
  };
  return {
    initialize: function (input, done) {
      shard = input.shardId;
      emit('initialize', { shard: shard, checkpoint: input.sequenceNumber, sub: input.subSequenceNumber });
      done();
    },
    processRecords: function (input, done) {
      if (!input || !input.records || input.records.length === 0) {
        done();
        return;
      }
      let last = null;
      for (const r of input.records) {
        emit('record', {
          shard: shard,
          seq: r.sequenceNumber,
          sub: r.subSequenceNumber || 0,
          key: r.partitionKey,
          data: Buffer.from(r.data, 'base64').toString('utf8'),
          arrival: r.approximateArrivalTimestamp,
        });
        last = r;
      }
      checkpoint(input.checkpointer, last.sequenceNumber, done);
    },
    leaseLost: function (input, done) {
      emit('lease_lost', { shard: shard });
      done();
    },
    shardEnded: function (input, done) {
      emit('shard_ended', { shard: shard });
      checkpoint(input.checkpointer, null, done);
    },
    shutdownRequested: function (input, done) {
      emit('shutdown_requested', { shard: shard });
      checkpoint(input.checkpointer, null, done);
    },
  };
}

kcl(recordingProcessor()).run();
