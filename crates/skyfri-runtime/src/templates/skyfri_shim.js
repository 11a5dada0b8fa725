// skyfri's Node shim: serves handler.js (OpenFaaS node18 calling convention) over HTTP/1.1 on
// the unix socket named by SKYFRI_SOCKET.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

// A stem cell (SKYFRI_CELL=1) starts before it knows its function: it answers health checks
// until skyfri sends /_/specialise with the function's directory and environment.
let cell = process.env.SKYFRI_CELL === '1';
let handler = null;

// Required once at start, so a broken handler fails the deploy instead of every request.
function loadHandler() {
  handler = require(path.join(process.cwd(), 'handler.js'));
}

// The first require() from a directory pays for module resolution and compilation set-up:
// a stem cell pays it before a function waits, on a throwaway module in its private /tmp.
function warmUpRequire() {
  const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'skyfri-warm-up-'));
  const file = path.join(dir, 'handler.js');
  try {
    fs.writeFileSync(file, 'module.exports = async (event, context) => event;\n');
    require(file);
    delete require.cache[file];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function specialise(res, raw) {
  if (!cell) {
    send(res, 409, {}, 'already specialised');
    return;
  }
  try {
    const spec = JSON.parse(raw.toString('utf8'));
    for (const k of Object.keys(process.env)) {
      delete process.env[k];
    }
    Object.assign(process.env, spec.env);
    process.chdir(spec.cwd);
    loadHandler();
  } catch (e) {
    const text = (e && e.stack) || String(e);
    console.error(text);
    send(res, 500, { 'Content-Type': 'text/plain; charset=utf-8' }, text);
    return;
  }
  cell = false;
  send(res, 200, {}, 'specialised');
}

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
    if (draining) {
      res.setHeader('Connection', 'close');
    }
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
  if (draining) {
    res.setHeader('Connection', 'close');
  }
  res.statusCode = status;
  res.end(body);
}

// Stopping (scale-down, redeploy, removal send SIGTERM): no new connections, the calls in
// flight finish (within the exec timeout), then the shim exits.
let inFlight = 0;
let draining = false;

function callStarted(res) {
  inFlight++;
  res.on('close', () => {
    inFlight--;
    if (draining && inFlight === 0) {
      process.exit(0);
    }
  });
}

process.on('SIGTERM', () => {
  if (draining) {
    return;
  }
  draining = true;
  try {
    // Without its path the socket takes no new connections; open ones are still served.
    fs.unlinkSync(process.env.SKYFRI_SOCKET);
  } catch (e) {
    // Already gone.
  }
  if (inFlight === 0) {
    process.exit(0);
  }
  const timeout = Number(process.env.SKYFRI_TIMEOUT_SECONDS) || 60;
  setTimeout(() => process.exit(0), timeout * 1000);
});

async function invoke(req, res, raw) {
  callStarted(res);
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
    if (req.url === '/_/specialise') {
      specialise(res, Buffer.concat(chunks));
      return;
    }
    if (handler === null) {
      send(res, 503, {}, 'stem cell: not specialised yet');
      return;
    }
    invoke(req, res, Buffer.concat(chunks));
  });
});
// The gateway pools connections; Node's 5 s default would close them under its feet.
server.keepAliveTimeout = 10 * 60 * 1000;
server.headersTimeout = 11 * 60 * 1000;

if (cell) {
  warmUpRequire();
} else {
  loadHandler();
}
const socketPath = process.env.SKYFRI_SOCKET;
try {
  fs.unlinkSync(socketPath);
} catch (e) {
  // Not there: nothing stale to clean up.
}
server.listen(socketPath);
