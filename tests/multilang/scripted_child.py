#!/usr/bin/env python3
"""A hand-written MultiLang child (no client library) for kcl-tools/tests/multilang_local.rs:
it speaks the protocol line by line, probes the daemon's checkpoint answers, and misbehaves once
as SCRIPT_MODE says, so that the tests can check how the daemon deals with a bad child.

SCRIPT_OUT: the file it appends JSON lines to: {"got": <message received>} for each message and
{"reply": <checkpoint reply>, "asked": <what was asked>} for each checkpoint answer.
SCRIPT_MARKER: exists once the child misbehaved (it misbehaves only once per test).
SCRIPT_MODE:
  normal        behaves
  wrong_status  answers the first processRecords with the status for another action
  hang          never answers the first processRecords
  exit          exits in the middle of the first processRecords
"""
import json
import os
import sys
import time

OUT = os.environ["SCRIPT_OUT"]
MARKER = os.environ["SCRIPT_MARKER"]
MODE = os.environ.get("SCRIPT_MODE", "normal")


def log(obj):
    with open(OUT, "a") as f:
        f.write(json.dumps(obj) + "\n")


def send(obj):
    # Noise the daemon must skip: a blank line and a line that is not a message.
    sys.stdout.write("\n")
    sys.stdout.write("not json at all\n")
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def checkpoint(seq, sub, with_sub=True):
    msg = {"action": "checkpoint", "sequenceNumber": seq}
    if with_sub:
        msg["subSequenceNumber"] = sub
    send(msg)
    line = sys.stdin.readline()
    reply = json.loads(line)
    log({"reply": reply, "asked": msg})
    return reply


def misbehave_now():
    if MODE == "normal":
        return False
    # Both shards' children may ask at once: only the one that creates the marker misbehaves.
    try:
        os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    action = msg["action"]
    log({"got": msg})
    if action == "initialize":
        # No checkpointer during initialize: InvalidStateException.
        checkpoint(None, None)
    elif action == "processRecords":
        if misbehave_now():
            if MODE == "wrong_status":
                send({"action": "status", "responseFor": "initialize"})
                continue
            if MODE == "hang":
                time.sleep(3600)
            if MODE == "exit":
                os._exit(5)
        last = msg["records"][-1]
        # Beyond the last delivered record: IllegalArgumentException.
        checkpoint(str(int(last["sequenceNumber"]) + 1), 0)
        # Not a sequence number at all: IllegalArgumentException.
        checkpoint("bogus", None, with_sub=False)
        # At the last record, sequence number only (as aws-kcl does): accepted.
        checkpoint(last["sequenceNumber"], None, with_sub=False)
    elif action in ("shardEnded", "shutdownRequested"):
        checkpoint(None, None)
    send({"action": "status", "responseFor": action})
