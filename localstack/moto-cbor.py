#!/usr/bin/env python3
"""moto's server, with the Smithy RPC v2 CBOR protocol in front (started by start-moto.sh).

Why: the AWS SDK for Rust's CloudWatch client (aws-sdk-cloudwatch 1.1xx) speaks only CloudWatch's
newest protocol, Smithy RPC v2 CBOR (`POST /service/GraniteServiceVersion20100801/operation/<Op>`,
`Content-Type: application/cbor`). moto serves CloudWatch's other protocols (awsJson1_0 and
awsQuery) but not that one. This WSGI middleware turns such a request into the same call in
awsJson1_0 (`POST /`, `X-Amz-Target: GraniteServiceVersion20100801.<Op>`) and moto's JSON answer
back into CBOR, converting timestamps, blobs and numbers by botocore's model of the operation (the
model moto itself parses requests with). Every other request goes to moto unchanged.

Usage: moto-cbor.py HOST PORT   (run with the virtualenv's Python, which has moto and cbor2)
"""

import base64
import datetime
import gzip
import io
import json
import re
import sys

import botocore.session
import cbor2
from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

PATH = re.compile(r"^/service/(?P<service>[A-Za-z0-9_]+)/operation/(?P<op>[A-Za-z0-9_]+)/?$")
UTC = datetime.timezone.utc
MODELS = {}


def service_model(target_prefix):
    """botocore's model of the service whose JSON target prefix this is (CloudWatch's here)."""
    if target_prefix not in MODELS:
        session = botocore.session.get_session()
        for name in session.get_available_services():
            model = session.get_service_model(name)
            if model.metadata.get("targetPrefix") == target_prefix:
                MODELS[target_prefix] = model
                break
        else:
            MODELS[target_prefix] = None
    return MODELS[target_prefix]


def to_json(value, shape):
    """A decoded CBOR value -> the awsJson1_0 form of the same shape."""
    if value is None or shape is None:
        return value
    kind = shape.type_name
    if kind == "structure":
        return {k: to_json(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "list":
        return [to_json(v, shape.member) for v in value]
    if kind == "map":
        return {k: to_json(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.timestamp()
        return value
    if kind == "blob":
        return base64.b64encode(value).decode() if isinstance(value, (bytes, bytearray)) else value
    return value


def to_cbor(value, shape):
    """A value of moto's awsJson1_0 answer -> the form the CBOR protocol wants for that shape."""
    if value is None or shape is None:
        return value
    kind = shape.type_name
    if kind == "structure":
        return {k: to_cbor(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "list":
        return [to_cbor(v, shape.member) for v in value]
    if kind == "map":
        return {k: to_cbor(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, (int, float)):
            return datetime.datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value
    if kind in ("double", "float"):
        return float(value)
    if kind in ("integer", "long"):
        return int(value)
    if kind == "blob":
        return base64.b64decode(value) if isinstance(value, str) else value
    return value


class CborFront:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        match = PATH.match(environ.get("PATH_INFO", ""))
        if not match or "cbor" not in environ.get("CONTENT_TYPE", ""):
            return self.app(environ, start_response)
        service, op = match.group("service"), match.group("op")
        model = service_model(service)
        if model is None:
            return self.app(environ, start_response)
        operation = model.operation_model(op)

        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
            body = gzip.decompress(body)
        params = cbor2.loads(body) if body else {}
        data = json.dumps(to_json(params, operation.input_shape)).encode()

        inner = dict(environ)
        inner.pop("HTTP_CONTENT_ENCODING", None)
        inner.update({
            "PATH_INFO": "/",
            "RAW_URI": "/",
            "REQUEST_URI": "/",
            "CONTENT_TYPE": "application/x-amz-json-1.0",
            "CONTENT_LENGTH": str(len(data)),
            "HTTP_X_AMZ_TARGET": f"{service}.{op}",
            "wsgi.input": io.BytesIO(data),
        })
        answer = {}
        chunks = []

        def capture(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return chunks.append

        result = self.app(inner, capture)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        raw = b"".join(chunks)
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            parsed = {"__type": "InternalFailure", "message": raw.decode(errors="replace")}
        if answer["status"].startswith("2"):
            parsed = to_cbor(parsed, operation.output_shape) or {}
        out = cbor2.dumps(parsed, datetime_as_timestamp=True, timezone=UTC)
        headers = [(k, v) for k, v in answer["headers"]
                   if k.lower() not in ("content-type", "content-length")]
        headers += [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor"),
                    ("Content-Length", str(len(out)))]
        start_response(answer["status"], headers)
        return [out]


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, CborFront(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
