'use strict';
// One endpoint for both emulators, as LocalStack serves them on its edge port: requests are
// routed by their X-Amz-Target header (Kinesis_20131202.* -> Kinesis; DynamoDB_20120810.* and
// DynamoDBStreams_20120810.* -> DynamoDB), or else by the service in the SigV4 credential scope
// of the Authorization header (.../<region>/kinesis/aws4_request or .../dynamodb/...); anything
// else gets a 400 with a JSON error. Bodies are piped through unchanged, in both directions
// (so long-lived streamed responses such as SubscribeToShard's event stream pass too), and so
// are the headers, Host included (the emulators do not verify signatures); only the hop-by-hop
// headers (Connection, Keep-Alive, ...) are left to each leg, which keeps both legs keep-alive.
// An upstream that cannot be reached or fails mid-way gives a 502 (or a cut connection, if the
// response had already started).
//
// Plain Node, no dependencies. Binds 127.0.0.1 only.
// Usage: node edge-proxy.cjs <edge port> <kinesis port> <dynamodb port>
const http = require('http');

const [edgePort, kinesisPort, dynamoPort] = process.argv.slice(2).map(Number);
if (![edgePort, kinesisPort, dynamoPort].every((p) => Number.isInteger(p) && p > 0 && p < 65536)) {
  console.error('usage: edge-proxy.cjs <edge port> <kinesis port> <dynamodb port>');
  process.exit(2);
}
const HOST = '127.0.0.1';
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function route(req) {
  const target = String(req.headers['x-amz-target'] || '');
  if (target.startsWith('Kinesis_20131202.')) return kinesisPort;
  if (target.startsWith('DynamoDB_20120810.') || target.startsWith('DynamoDBStreams_')) return dynamoPort;
  // SigV4: Credential=<key id>/<date>/<region>/<service>/aws4_request
  const scope = /Credential=[^/,\s]*\/[^/,\s]*\/[^/,\s]*\/([^/,\s]+)\/aws4_request/.exec(
    String(req.headers.authorization || ''),
  );
  if (scope && scope[1] === 'kinesis') return kinesisPort;
  if (scope && (scope[1] === 'dynamodb' || scope[1] === 'streams.dynamodb')) return dynamoPort;
  return null;
}

// Per-connection headers (RFC 9110 7.6.1), plus any the Connection header names.
// Transfer-Encoding and Content-Length stay: Node frames each leg from them.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade'];
function endToEnd(headers) {
  const out = Object.assign({}, headers);
  const named = String(headers.connection || '')
    .split(',')
    .map((h) => h.trim().toLowerCase())
    .filter((h) => h && h !== 'transfer-encoding' && h !== 'content-length');
  for (const h of HOP_BY_HOP.concat(named)) delete out[h];
  return out;
}

function fail(res, status, type, message) {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ __type: type, message });
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const port = route(req);
  if (port === null) {
    req.resume(); // drain, so the connection can be kept alive
    fail(res, 400, 'UnknownServiceException',
      'edge proxy: cannot tell the service (no Kinesis/DynamoDB X-Amz-Target, no SigV4 kinesis/dynamodb credential scope)');
    return;
  }
  const upstream = http.request(
    { host: HOST, port, method: req.method, path: req.url, headers: endToEnd(req.headers), agent },
    (up) => {
      res.writeHead(up.statusCode, up.statusMessage, endToEnd(up.headers));
      up.pipe(res);
      up.on('error', (e) => {
        console.error(`edge proxy: ${req.method} ${req.url} -> :${port}: response: ${e.message}`);
        res.destroy();
      });
    },
  );
  upstream.on('error', (e) => {
    console.error(`edge proxy: ${req.method} ${req.url} -> :${port}: ${e.message}`);
    fail(res, 502, 'ServiceUnavailableException', `edge proxy: upstream 127.0.0.1:${port}: ${e.message}`);
  });
  // The client went away (e.g. a SubscribeToShard subscriber closed): drop the upstream too.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.on('error', () => upstream.destroy());
  req.pipe(upstream);
});
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
server.requestTimeout = 0; // request bodies may be slow; responses (event streams) may be long
server.on('clientError', (e, socket) => {
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  else socket.destroy();
});
server.on('error', (e) => {
  console.error(`edge proxy: cannot listen on ${HOST}:${edgePort}: ${e.message}`);
  process.exit(1);
});
server.listen(edgePort, HOST, () =>
  console.log(`edge proxy on ${HOST}:${edgePort} -> kinesis :${kinesisPort}, dynamodb :${dynamoPort}`),
);
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
