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
// STS, as LocalStack serves it: `AssumeRole` (SigV4 service `sts`) is answered here with
// temporary credentials for any role, whose access key id is derived from the role ARN (so a
// request shows which role signed it); other STS actions get an error.
//
// `GET /_kcl/requests` lists what the edge saw (the last 10,000 requests, oldest first), as
// JSON: for each, the service, the action, the signing access key id, and for Kinesis the
// `StreamName`/`StreamARN` of the request body, for STS the role, session name and external id.
// Tests use it to check which credentials and which stream addressing each call used.
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

// SigV4: Credential=<key id>/<date>/<region>/<service>/aws4_request
function credentialScope(req) {
  const m = /Credential=([^/,\s]*)\/[^/,\s]*\/[^/,\s]*\/([^/,\s]+)\/aws4_request/.exec(
    String(req.headers.authorization || ''),
  );
  return m ? { keyId: m[1], service: m[2] } : { keyId: null, service: null };
}

function route(req) {
  const target = String(req.headers['x-amz-target'] || '');
  if (target.startsWith('Kinesis_20131202.')) return kinesisPort;
  if (target.startsWith('DynamoDB_20120810.') || target.startsWith('DynamoDBStreams_')) return dynamoPort;
  const { service } = credentialScope(req);
  if (service === 'kinesis') return kinesisPort;
  if (service === 'dynamodb' || service === 'streams.dynamodb') return dynamoPort;
  return null;
}

// What the edge saw, bounded.
const SEEN_MAX = 10000;
const seen = [];
function remember(entry) {
  seen.push(Object.assign({ time: new Date().toISOString() }, entry));
  if (seen.length > SEEN_MAX) seen.splice(0, seen.length - SEEN_MAX);
}

// Kinesis request bodies are small JSON documents; the first 64 KiB are kept to read the
// stream they name (the body itself is piped through untouched).
const BODY_PEEK = 64 * 1024;
function kinesisEntry(req, body) {
  const { keyId } = credentialScope(req);
  const action = String(req.headers['x-amz-target'] || '').replace(/^Kinesis_20131202\./, '') || null;
  let streamName = null;
  let streamArn = null;
  try {
    const doc = JSON.parse(body);
    streamName = doc.StreamName === undefined ? null : doc.StreamName;
    streamArn = doc.StreamARN === undefined ? null : doc.StreamARN;
  } catch (e) {
    // CBOR or a cut body: the stream is not known.
  }
  return { service: 'kinesis', action, accessKeyId: keyId, streamName, streamArn };
}

// A deterministic access key id per role: ASIA + 16 of [A-Z2-7] from a hash of the ARN.
function keyIdFor(roleArn) {
  let h = 2166136261;
  let out = 'ASIA';
  for (let round = 0; out.length < 20; round++) {
    for (const c of `${round}:${roleArn}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
    out += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'[h % 32];
  }
  return out;
}

function xmlEscape(s) {
  return String(s).replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]);
}

function sts(req, res) {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size <= BODY_PEEK) chunks.push(c);
  });
  req.on('end', () => {
    const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
    const action = form.get('Action');
    const roleArn = form.get('RoleArn');
    const sessionName = form.get('RoleSessionName');
    remember({
      service: 'sts',
      action,
      accessKeyId: credentialScope(req).keyId,
      roleArn,
      sessionName,
      externalId: form.get('ExternalId'),
    });
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (action !== 'AssumeRole' || !roleArn || !sessionName) {
      reply(400, '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
        + '<Code>InvalidAction</Code><Message>edge proxy: only AssumeRole with RoleArn and RoleSessionName is served'
        + '</Message></Error><RequestId>0</RequestId></ErrorResponse>');
      return;
    }
    const m = /^arn:([^:]+):iam::(\d{12}):role\/(.+)$/.exec(roleArn);
    if (!m) {
      reply(400, '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
        + `<Code>ValidationError</Code><Message>${xmlEscape(roleArn)} is not a role ARN</Message></Error>`
        + '<RequestId>0</RequestId></ErrorResponse>');
      return;
    }
    const roleName = m[3].split('/').pop();
    const expiration = new Date(Date.now() + 3600 * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    reply(200, '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
      + `<AssumedRoleUser><AssumedRoleId>AROA${keyIdFor(roleArn).slice(4)}:${xmlEscape(sessionName)}</AssumedRoleId>`
      + `<Arn>arn:${m[1]}:sts::${m[2]}:assumed-role/${xmlEscape(roleName)}/${xmlEscape(sessionName)}</Arn></AssumedRoleUser>`
      + `<Credentials><AccessKeyId>${keyIdFor(roleArn)}</AccessKeyId><SecretAccessKey>edge-proxy-secret</SecretAccessKey>`
      + `<SessionToken>edge-proxy-token-${xmlEscape(sessionName)}</SessionToken><Expiration>${expiration}</Expiration></Credentials>`
      + '</AssumeRoleResult><ResponseMetadata><RequestId>0</RequestId></ResponseMetadata></AssumeRoleResponse>');
  });
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
  if (req.method === 'GET' && req.url === '/_kcl/requests') {
    req.resume();
    const body = JSON.stringify(seen);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  if (credentialScope(req).service === 'sts') {
    sts(req, res);
    return;
  }
  const port = route(req);
  if (port === kinesisPort) {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      if (size < BODY_PEEK) chunks.push(c);
      size += c.length;
    });
    req.on('end', () => remember(kinesisEntry(req, Buffer.concat(chunks).toString('utf8'))));
  }
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
