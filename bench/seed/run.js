/**
 * Benchmark driver for the seed port (seed.js): the same workload as the Python core benchmark.
 *
 *   node bench/seed/run.js [--sizes 1000,10000,100000] [--reps 7] [--batch 1000]
 *                          [--lookups 20000] [--expiry-n 10000] [--interval-ms 1000]
 *
 * At each size N (N live sessions): create a batch, look up, update activity, close the batch,
 * and one cleanup sweep over N sessions with none due and with all due. Then the seed's expiry
 * lateness with real time: sessions created over one second with a one-second timeout, swept
 * every --interval-ms (60 s in the seed; scaled down here, lateness scales with it).
 * Prints one JSON document (nanoseconds per operation, one value per repetition).
 * Run with --expose-gc for the memory figure.
 */
'use strict';

const path = require('path');
const { SessionManager } = require(path.join(__dirname, 'seed.js'));

const logger = { debug() {}, info() {}, warn() {}, error() {} };

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const sizes = arg('sizes', '1000,10000,100000').split(',').map(Number);
const reps = Number(arg('reps', '7'));
const batchMax = Number(arg('batch', '1000'));
const lookups = Number(arg('lookups', '20000'));
const expiryN = Number(arg('expiry-n', '10000'));
const intervalMs = Number(arg('interval-ms', '1000'));

const now = () => process.hrtime.bigint();
const perOp = (t0, count) => Number(now() - t0) / count;

function sample(ids, k) {
  const out = new Array(k);
  for (let i = 0; i < k; i++) out[i] = ids[Math.floor(Math.random() * ids.length)];
  return out;
}

function heapUsed() {
  if (global.gc) global.gc();
  return process.memoryUsage().heapUsed;
}

function atSize(n) {
  const batch = Math.min(batchMax, Math.max(100, Math.floor(n / 10)));
  const raw = { create: [], lookup: [], activity: [], close: [], sweep_none_due: [] };
  const m = new SessionManager(logger, { maxSessions: n + 2 * batch });
  m.on('session:created', () => {});
  m.on('session:closed', () => {});
  const before = heapUsed();
  const ids = [];
  for (let i = 0; i < n; i++) ids.push(m.createSession('http').id);
  const memory = (heapUsed() - before) / n;
  let sink = 0;
  for (let rep = 0; rep < reps; rep++) {
    let t0 = now();
    const fresh = new Array(batch);
    for (let i = 0; i < batch; i++) fresh[i] = m.createSession('http').id;
    raw.create.push(perOp(t0, batch));
    const many = sample(ids, lookups);
    t0 = now();
    for (const id of many) if (m.getSession(id)) sink++;
    raw.lookup.push(perOp(t0, lookups));
    const some = sample(ids, batch);
    t0 = now();
    for (const id of some) m.updateActivity(id);
    raw.activity.push(perOp(t0, batch));
    t0 = now();
    for (const id of fresh) m.closeSession(id);
    raw.close.push(perOp(t0, batch));
    t0 = now();
    m.cleanupExpiredSessions(); // nothing is due: the cost of a sweep over n live sessions
    raw.sweep_none_due.push(Number(now() - t0));
  }
  m.destroy();
  // A sweep that expires all n sessions (the timeout is 1 ms; wait until all are due).
  const sweepAll = [];
  const sweepReps = Math.max(1, Math.min(reps, n >= 100000 ? 3 : reps));
  for (let rep = 0; rep < sweepReps; rep++) {
    const e = new SessionManager(logger, { maxSessions: n, sessionTimeout: 1 });
    e.on('session:expired', () => {});
    for (let i = 0; i < n; i++) e.createSession('http');
    const until = Date.now() + 3;
    while (Date.now() < until) {
      /* let every session become due */
    }
    const t0 = now();
    const count = e.cleanupExpiredSessions();
    sweepAll.push(perOp(t0, n));
    if (count !== n) throw new Error(`expired ${count} of ${n}`);
    e.destroy();
  }
  return { n, batch, reps, raw, sweep_all_due_per_session: sweepAll, memory_per_session: memory, sink };
}

function lateness() {
  return new Promise((resolve) => {
    const timeout = 1000;
    const m = new SessionManager(logger, {
      maxSessions: expiryN,
      sessionTimeout: timeout,
      cleanupInterval: intervalMs,
    });
    const late = [];
    m.on('session:expired', (s) => {
      late.push(Date.now() - (s.lastActivityAt.getTime() + timeout));
      if (late.length === expiryN) {
        m.destroy();
        late.sort((a, b) => a - b);
        resolve(late);
      }
    });
    let made = 0;
    const steps = 100;
    const perStep = Math.max(1, Math.floor(expiryN / steps));
    const tick = setInterval(() => {
      for (let i = 0; i < perStep && made < expiryN; i++, made++) m.createSession('http');
      if (made >= expiryN) clearInterval(tick);
    }, 1000 / steps);
  });
}

async function main() {
  const started = Date.now();
  const results = sizes.map(atSize);
  const late = await lateness();
  const q = (p) => late[Math.min(late.length - 1, Math.round((p / 100) * (late.length - 1)))];
  const thin = [];
  const step = Math.max(1, Math.floor(late.length / 2000));
  for (let i = 0; i < late.length; i += step) thin.push(late[i]);
  process.stdout.write(
    JSON.stringify({
      node: process.version,
      sizes: results,
      expiry: {
        n: expiryN,
        timeout_ms: 1000,
        interval_ms: intervalMs,
        default_interval_ms: 60000,
        min_ms: late[0],
        p50_ms: q(50),
        p90_ms: q(90),
        p99_ms: q(99),
        max_ms: late[late.length - 1],
        samples_ms: thin,
      },
      seconds: (Date.now() - started) / 1000,
    }) + '\n'
  );
}

main();
