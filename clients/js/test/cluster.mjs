// A real Switchboard cluster for the JS tests: redis-server on a free port,
// the relay and message servers as processes (so a test can kill -9 one and
// start it again on the same ports). The binaries come from SB_BIN_DIR, or
// target/debug of this repository (scripts/test builds them first).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN_DIR = process.env.SB_BIN_DIR ? resolve(process.env.SB_BIN_DIR) : join(ROOT, 'target', 'debug');
const READY_MS = 30000;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port nobody listens on now. */
export async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * Waits until `check()` returns a truthy value (polled), or fails with `what`.
 * @template T
 * @param {string} what
 * @param {() => T|Promise<T>} check
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(50);
  }
}

function portOpen(port) {
  return new Promise((res) => {
    const c = connect(port, '127.0.0.1');
    c.on('connect', () => {
      c.destroy();
      res(true);
    });
    c.on('error', () => res(false));
  });
}

class Proc {
  constructor(name, cmd, args) {
    this.name = name;
    this.output = '';
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG ?? 'info' } });
    const keep = (d) => {
      this.output = (this.output + d.toString()).slice(-20000);
    };
    this.child.stdout.on('data', keep);
    this.child.stderr.on('data', keep);
    this.exited = new Promise((res) => this.child.on('exit', (code, signal) => res({ code, signal })));
  }

  alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(signal = 'SIGKILL') {
    if (this.alive()) this.child.kill(signal);
    await this.exited;
  }
}

function bin(name) {
  const path = join(BIN_DIR, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: build it first (cargo build -p relay-server -p message-server)`);
  return path;
}

/**
 * Starts Redis, a relay and message servers.
 * @param {{servers?: string[], tokenSecret?: string, serverArgs?: Record<string, string[]>}} [opts]
 */
export async function startCluster(opts = {}) {
  const ids = opts.servers ?? ['a', 'b'];
  const dir = mkdtempSync(join(tmpdir(), 'sb-js-'));
  const procs = [];
  const cluster = {
    dir,
    redisPort: await freePort(),
    relayLink: await freePort(),
    relayAdmin: await freePort(),
    /** @type {Record<string, {ws: number, tcp: number, proc: Proc|null, args: string[]}>} */
    servers: {},
    relay: /** @type {Proc|null} */ (null),
    redis: /** @type {Proc|null} */ (null),
  };
  let secretFile = null;
  if (opts.tokenSecret) {
    secretFile = join(dir, 'token-secret');
    writeFileSync(secretFile, opts.tokenSecret);
  }

  cluster.redis = new Proc('redis', 'redis-server', ['--port', String(cluster.redisPort), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no']);
  procs.push(cluster.redis);
  await waitFor('redis to listen', () => portOpen(cluster.redisPort), READY_MS);
  const redisUrl = `redis://127.0.0.1:${cluster.redisPort}/`;

  cluster.startRelay = async () => {
    const p = new Proc('relay', bin('relay-server'), ['--listen', `127.0.0.1:${cluster.relayLink}`, '--admin', `127.0.0.1:${cluster.relayAdmin}`, '--redis', redisUrl]);
    procs.push(p);
    cluster.relay = p;
    await waitFor('the relay to answer /healthz', async () => (await fetch(`${cluster.adminUrl()}/healthz`)).ok, READY_MS);
  };
  cluster.adminUrl = () => `http://127.0.0.1:${cluster.relayAdmin}`;

  /** Starts (or starts again, on the same ports) server `id`; waits for its /healthz. */
  cluster.start = async (id) => {
    const s = cluster.servers[id];
    const auth = secretFile ? ['--token-secret-file', secretFile] : ['--insecure-login'];
    const p = new Proc(`server-${id}`, bin('message-server'), [
      '--id', id,
      '--ws', `127.0.0.1:${s.ws}`,
      '--tcp', `127.0.0.1:${s.tcp}`,
      '--relay', `127.0.0.1:${cluster.relayLink}`,
      '--redis', redisUrl,
      '--registry-interval', '300ms',
      ...auth,
      ...(opts.serverArgs?.[id] ?? []),
    ]);
    procs.push(p);
    s.proc = p;
    await waitFor(`server ${id} to answer /healthz with ok`, async () => {
      if (!p.alive()) throw new Error(`server ${id} exited:\n${p.output}`);
      return (await fetch(`${cluster.httpUrl(id)}/healthz`)).ok;
    }, READY_MS);
  };
  /** A token for `user` signed with the cluster's secret (sb-token). */
  cluster.token = (user) => {
    if (!secretFile) throw new Error('this cluster has no token secret');
    const out = spawnSync(bin('sb-token'), ['--secret-file', secretFile, '--user', user], { encoding: 'utf8' });
    if (out.status !== 0) throw new Error(`sb-token failed: ${out.stderr}`);
    return out.stdout.trim();
  };
  /** kill -9 server `id`. */
  cluster.kill = async (id) => cluster.servers[id].proc?.kill('SIGKILL');
  cluster.wsUrl = (id) => `ws://127.0.0.1:${cluster.servers[id].ws}/ws`;
  cluster.httpUrl = (id) => `http://127.0.0.1:${cluster.servers[id].ws}`;
  cluster.stop = async () => {
    await Promise.all(procs.map((p) => p.kill('SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  };
  /** The output of every process, for a failed test's message. */
  cluster.logs = () => procs.map((p) => `---- ${p.name}\n${p.output.slice(-3000)}`).join('\n');

  try {
    await cluster.startRelay();
    for (const id of ids) {
      cluster.servers[id] = { ws: await freePort(), tcp: await freePort(), proc: null };
    }
    for (const id of ids) await cluster.start(id);
    // Each server sees the others in the registry (for /servers).
    await waitFor('every server to see the others', async () => {
      for (const id of ids) {
        const body = await (await fetch(`${cluster.httpUrl(id)}/servers`)).json();
        if (body.servers.length < ids.length) return false;
      }
      return true;
    });
  } catch (e) {
    const logs = cluster.logs();
    await cluster.stop();
    throw new Error(`${e.message}\n${logs}`);
  }
  process.once('exit', () => {
    for (const p of procs) if (p.alive()) p.child.kill('SIGKILL');
  });
  return cluster;
}
