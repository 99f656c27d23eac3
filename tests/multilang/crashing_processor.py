#!/usr/bin/env python3
"""The recording processor of tests/java-kcl/processor.py, except that the first time it is
given a record whose data ends with "#crash" it exits at once (status 3), before recording
anything of that batch. KCL_CRASH_MARKER is the file that remembers it crashed already.

kcl-tools/tests/kcl_multilang.rs uses it to check that a dying child fails its own shard
only: the daemon keeps running, a new child gets the same batch again.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "java-kcl"))

import processor  # noqa: E402  (the recording processor)
from amazon_kclpy import kcl  # noqa: E402


class CrashingProcessor(processor.RecordingProcessor):
    def process_records(self, process_records_input):
        marker = os.environ["KCL_CRASH_MARKER"]
        for record in process_records_input.records:
            if record.binary_data.endswith(b"#crash") and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(self.shard or "")
                os._exit(3)
        super().process_records(process_records_input)


if __name__ == "__main__":
    kcl.KCLProcess(CrashingProcessor()).run()
