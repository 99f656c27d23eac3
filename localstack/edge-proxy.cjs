'use strict';
// One endpoint for both emulators, as LocalStack serves them on its edge port: requests are
// routed by their X-Amz-Target header (Kinesis_20131202.* -> Kinesis, DynamoDB_20120810.* ->
// DynamoDB), or else by the service in the SigV4 credential scope of the Authorization header.
// Bodies and headers pass through unchanged (the emulators do not verify signatures).
//
// Usage: node edge-proxy.cjs <edge port> <kinesis port> <dynamodb port>   (binds 127.0.0.1)
const http = require('http');

const [edgePort, kinesisPort, dynamoPort] = process.argv.slice(2).map(Number);
if (![edgePort, kinesisPort, dynamoPort].every((p) => Number.isInteger(p) && p > 0)) {
  console.error('usage: edge-proxy.cjs <edge port> <kinesis port> <dynamodb port>');
  process.exit(2);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function route(req) {
  const target = String(req.headers['x-amz-target'] || '');
  if (target.startsWith('Kinesis_')) return kinesisPort;
  if (target.startsWith('DynamoDB_') || target.startsWith('DynamoDBStreams_')) return dynamoPort;
  const scope = /Credential=[^/]*\/[^/]*\/[^/]*\/([^/]+)\//.exec(String(req.headers.authorization || ''));
  if (scope && scope[1] === 'kinesis') return kinesisPort;
  if (scope && scope[1] === 'dynamodb') return dynamoPort;
  return null;
}

function fail(res, status, type, message) {
  if (res.headersSent) return res.destroy();
  res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1' });
  res.end(JSON.stringify({ __type: type, message }));
}

const server = http.createServer((req, res) => {
  const port = route(req);
  if (port === null) return fail(res, 400, 'UnknownServiceException', 'edge proxy: no X-Amz-Target or SigV4 service');
  const upstream = http.request(
    { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers, agent },
    (up) => {
      res.writeHead(up.statusCode, up.statusMessage, up.headers);
      up.pipe(res);
    },
  );
  upstream.on('error', (e) => fail(res, 502, 'ServiceUnavailable', `edge proxy: ${e.message}`));
  req.pipe(upstream);
});
server.keepAliveTimeout = 65000;
server.listen(edgePort, '127.0.0.1', () => console.log(`edge proxy on 127.0.0.1:${edgePort}`));
