// skyfri's Node shim: serves handler.js (OpenFaaS node18 calling convention) over HTTP/1.1 on
// the unix socket named by SKYFRI_SOCKET.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

// Required once at start, so a broken handler fails the deploy instead of every request.
const handler = require(path.join(process.cwd(), 'handler.js'));

class FunctionEvent {
  constructor(req, body, url) {
    this.body = body;
    this.headers = req.headers;
    this.method = req.method;
    this.query = Object.fromEntries(url.searchParams);
    this.path = url.pathname;
  }
}

class FunctionContext {
  constructor(cb) {
    this.statusCode = 200;
    this.statusSet = false;
    this.headerValues = {};
    this.cb = cb;
    this.cbCalled = 0;
  }

  status(statusCode) {
    if (!statusCode) {
      return this.statusCode;
    }
    this.statusCode = statusCode;
    this.statusSet = true;
    return this;
  }

  headers(value) {
    if (!value) {
      return this.headerValues;
    }
    this.headerValues = value;
    return this;
  }

  succeed(value) {
    this.cbCalled++;
    this.cb(undefined, value);
  }

  fail(value) {
    if (!this.statusSet) {
      this.statusCode = 500;
    }
    this.cbCalled++;
    this.cb(value === undefined ? new Error('failed') : value, undefined);
  }
}

function encode(value) {
  if (value === undefined || value === null) {
    return { body: Buffer.alloc(0), type: null };
  }
  if (Buffer.isBuffer(value)) {
    return { body: value, type: 'application/octet-stream' };
  }
  if (value instanceof Error) {
    return { body: Buffer.from(String(value)), type: 'text/plain; charset=utf-8' };
  }
  if (typeof value === 'object') {
    return { body: Buffer.from(JSON.stringify(value)), type: 'application/json' };
  }
  return { body: Buffer.from(String(value)), type: 'text/html; charset=utf-8' };
}

function parseBody(req, raw) {
  const type = (req.headers['content-type'] || '').toLowerCase();
  const text = raw.toString('utf8');
  if (type.includes('json') && text.length > 0) {
    try {
      return JSON.parse(text);
    } catch (e) {
      // Express would answer 400; handing the raw text over is friendlier.
      return text;
    }
  }
  return text;
}

function send(res, status, headers, value) {
  try {
    write(res, status, headers, value);
  } catch (e) {
    // A header the function set was invalid, say: answer rather than leave the call hanging.
    console.error(e);
    for (const name of res.getHeaderNames()) {
      res.removeHeader(name);
    }
    const msg = Buffer.from(`skyfri: the function's response could not be sent: ${e.message}`);
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Content-Length', msg.length);
    res.statusCode = 500;
    res.end(msg);
  }
}

function write(res, status, headers, value) {
  const { body, type } = encode(value);
  const lower = Object.keys(headers).map((k) => k.toLowerCase());
  for (const [k, v] of Object.entries(headers)) {
    res.setHeader(k, v);
  }
  if (type && !lower.includes('content-type')) {
    res.setHeader('Content-Type', type);
  }
  res.setHeader('Content-Length', body.length);
  res.statusCode = status;
  res.end(body);
}

async function invoke(req, res, raw) {
  const url = new URL(req.url, 'http://localhost');
  let done = false;
  const cb = (err, result) => {
    if (done) {
      return;
    }
    done = true;
    if (err !== undefined && err !== null) {
      console.error(err);
      send(res, ctx.statusSet || ctx.statusCode !== 200 ? ctx.statusCode : 500, ctx.headers(), err);
      return;
    }
    send(res, ctx.statusCode, ctx.headers(), result);
  };
  const ctx = new FunctionContext(cb);
  try {
    const result = await handler(new FunctionEvent(req, parseBody(req, raw), url), ctx, cb);
    if (!ctx.cbCalled) {
      ctx.succeed(result);
    }
  } catch (e) {
    cb(e === undefined || e === null ? new Error('handler threw') : e);
  }
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.url === '/_/health') {
      send(res, 200, {}, 'OK');
      return;
    }
    invoke(req, res, Buffer.concat(chunks));
  });
});
// The gateway pools connections; Node's 5 s default would close them under its feet.
server.keepAliveTimeout = 10 * 60 * 1000;
server.headersTimeout = 11 * 60 * 1000;

const socketPath = process.env.SKYFRI_SOCKET;
try {
  fs.unlinkSync(socketPath);
} catch (e) {
  // Not there: nothing stale to clean up.
}
server.listen(socketPath);
