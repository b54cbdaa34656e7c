// Switchboard's JavaScript client: one ES module, no dependencies, for
// browsers and Node 18 or later (Node needs a WebSocket: global from Node 22,
// `--experimental-websocket` on Node 20, or pass one as `options.WebSocket`).
//
// It speaks the JSON encoding of the client protocol: every request carries a
// `cid` and is answered with the same `cid`. Direct messages carry the
// recipient's inbox `seq`: the client delivers each seq once and in order,
// resumes with `SYNC <last-seq> <epoch>` after a reconnect, and sends `SYNC`
// when it sees a gap. Sends waiting for `OK SENT` when the connection drops
// are sent again with the same `cid`, which the server stores once.
//
// A user's inbox holds the messages they received and those they sent (from
// any device), each with its own seq: copies of what other devices sent are
// `message` events with `from` equal to the user; copies of what this client
// sent are not (the `send` promise already told).
//
// A browser cannot read the status of a refused WebSocket handshake, so when
// a connection cannot be opened the client asks the server's HTTP port for
// `GET /servers` (CORS-enabled: the servers with room) and tries those.

/** @typedef {'idle'|'connecting'|'connected'|'reconnecting'|'closed'} ConnectionState */

/**
 * A message pushed by the server.
 * @typedef {object} Message
 * @property {'direct'|'room'|'all'|'tell'} kind direct (stored, has a seq), room, broadcast, or transient `TELL`
 * @property {number|null} seq the recipient's inbox sequence number (direct only)
 * @property {string} from sender
 * @property {string|null} to recipient (direct and tell)
 * @property {string|null} room room (room only)
 * @property {string} id message id
 * @property {number} ts unix time in milliseconds
 * @property {string} text body
 */

/**
 * @typedef {object} ClientOptions
 * @property {string|string[]} url WebSocket URL(s) of message servers, e.g. `ws://127.0.0.1:9001/ws`; tried in order
 * @property {string} user who logs in
 * @property {string} [token] a signed token (omit in dev mode, `--insecure-login`)
 * @property {string} [device] which of the user's devices this is (its ACK cursor)
 * @property {boolean} [history] replay the whole inbox on the first login (default false: only what this device has not acknowledged)
 * @property {boolean} [autoAck] acknowledge delivered direct messages (default true)
 * @property {number} [backoffMs] first reconnect delay in ms (default 250)
 * @property {number} [maxBackoffMs] longest reconnect delay in ms (default 5000)
 * @property {number} [requestTimeoutMs] how long a request waits for its answer while connected (default 15000)
 * @property {number} [pingIntervalMs] how often to check the connection with `PING` (default 25000; 0: never)
 * @property {typeof WebSocket} [WebSocket] a WebSocket constructor (default the global one)
 * @property {typeof fetch} [fetch] a fetch function for `/servers` (default the global one)
 */

/** An error the server answered with (`ERR <code> ...`), or a client-side failure. */
export class SwitchboardError extends Error {
  /**
   * @param {string} code the server's error code (`syntax`, `auth`, `full`, `rate`, ...) or `closed`, `timeout`, `disconnected`
   * @param {string} message a sentence
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'SwitchboardError';
    /** @type {string} */
    this.code = code;
  }
}

/** The token was refused (missing, forged, expired, or for another user). The client does not retry. */
export class AuthError extends SwitchboardError {
  /** @param {string} message */
  constructor(message) {
    super('auth', message);
    this.name = 'AuthError';
  }
}

/** The connection went away before the request was answered, or the client was closed. */
export class ConnectionError extends SwitchboardError {
  /**
   * @param {string} code `disconnected`, `closed` or `timeout`
   * @param {string} message
   */
  constructor(code, message) {
    super(code, message);
    this.name = 'ConnectionError';
  }
}

/**
 * Exponential backoff with equal jitter: each delay is drawn from
 * `[step/2, step]`, then the step doubles up to `max` (the schedule of the
 * Rust side's `shared::backoff::Backoff`).
 */
export class Backoff {
  /**
   * @param {number} firstMs
   * @param {number} maxMs
   */
  constructor(firstMs, maxMs) {
    this.first = firstMs;
    this.max = Math.max(maxMs, firstMs);
    this.step = firstMs;
  }

  /**
   * @param {number} [jitter] in [0, 1]; random by default
   * @returns {number} milliseconds to wait
   */
  next(jitter = Math.random()) {
    const j = Number.isNaN(jitter) ? 1 : Math.min(1, Math.max(0, jitter));
    const half = this.step / 2;
    const delay = half + (this.step - half) * j;
    this.step = Math.min(this.step * 2, this.max);
    return delay;
  }

  reset() {
    this.step = this.first;
  }
}

/**
 * Parses one text-encoding push line (`MSG`, `ROOM`, `ALL`) into a
 * {@link Message}; `null` for anything else. `MSG - from to id ts text` (seq
 * `-`) is a transient `TELL`.
 * @param {string} line
 * @returns {Message|null}
 */
export function parseTextPush(line) {
  const words = (n) => {
    const out = [];
    let rest = line;
    for (let i = 0; i < n; i++) {
      const sp = rest.indexOf(' ');
      if (sp < 0) return null;
      out.push(rest.slice(0, sp));
      rest = rest.slice(sp + 1);
    }
    out.push(rest.replace(/\\n/g, '\n').replace(/\\r/g, '\r'));
    return out;
  };
  if (line.startsWith('MSG ')) {
    const w = words(6);
    if (!w) return null;
    const [, seq, from, to, id, ts, text] = w;
    const n = seq === '-' ? null : Number(seq);
    if (n !== null && !Number.isSafeInteger(n)) return null;
    return { kind: n === null ? 'tell' : 'direct', seq: n, from, to, room: null, id, ts: Number(ts), text };
  }
  if (line.startsWith('ROOM ')) {
    const w = words(5);
    if (!w) return null;
    const [, room, from, id, ts, text] = w;
    return { kind: 'room', seq: null, from, to: null, room, id, ts: Number(ts), text };
  }
  if (line.startsWith('ALL ')) {
    const w = words(4);
    if (!w) return null;
    const [, from, id, ts, text] = w;
    return { kind: 'all', seq: null, from, to: null, room: null, id, ts: Number(ts), text };
  }
  return null;
}

/**
 * Turns a JSON push into a {@link Message}; `null` when it is not one.
 * @param {any} m
 * @returns {Message|null}
 */
function pushOf(m) {
  const base = { from: String(m.from ?? ''), id: String(m.id ?? ''), ts: Number(m.ts ?? 0), text: String(m.text ?? '') };
  switch (m.type) {
    case 'msg':
      if (typeof m.seq === 'number') return { kind: 'direct', seq: m.seq, to: m.to ?? null, room: null, ...base };
      return { kind: 'tell', seq: null, to: m.to ?? null, room: null, ...base };
    case 'tell':
      return { kind: 'tell', seq: null, to: m.to ?? null, room: null, ...base };
    case 'room':
      return { kind: 'room', seq: null, to: null, room: m.room ?? null, ...base };
    case 'all':
      return { kind: 'all', seq: null, to: null, room: null, ...base };
    default:
      return null;
  }
}

/**
 * `host:port` of a server (as `/servers` lists it) to a WebSocket URL in the
 * scheme of `like`.
 * @param {string} addr
 * @param {string} like
 */
function wsUrlOf(addr, like) {
  const secure = like.startsWith('wss:');
  return `${secure ? 'wss' : 'ws'}://${addr}/ws`;
}

/**
 * The HTTP URL of `/servers` on the server of a WebSocket URL.
 * @param {string} url
 */
export function serversUrlOf(url) {
  const u = new URL(url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = '/servers';
  u.search = '';
  return u.toString();
}

const ROOM_IDS_KEPT = 2048;
/** Login refusals that retrying cannot cure. */
const FATAL_LOGIN_CODES = new Set(['auth', 'syntax', 'json', 'login', 'forbidden']);
const OWN_IDS_KEPT = 4096;

/**
 * A Switchboard connection that logs in, reconnects and resumes by itself.
 *
 * Events (`client.on(name, fn)`): `message` ({@link Message}), `state`
 * ({@link ConnectionState}), `gap` (`{from, to, reason}`: inbox messages that
 * cannot be replayed), `error` ({@link SwitchboardError} not tied to a request),
 * `server` (the URL connected to).
 */
export class Client {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || !options.user) throw new TypeError('options.user is required');
    const urls = Array.isArray(options.url) ? options.url : [options.url];
    if (!urls.length || !urls.every((u) => typeof u === 'string' && /^wss?:\/\//.test(u))) {
      throw new TypeError('options.url must be one or more ws:// or wss:// URLs');
    }
    this.urls = urls;
    this.user = options.user;
    this.token = options.token;
    this.device = options.device;
    this.autoAck = options.autoAck ?? true;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15000;
    this.pingIntervalMs = options.pingIntervalMs ?? 25000;
    this.pingTimer = null;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (!this.WebSocket) {
      throw new TypeError('no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket)');
    }
    this.backoff = new Backoff(options.backoffMs ?? 250, options.maxBackoffMs ?? 5000);
    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {string|null} the URL of the current connection */
    this.server = null;
    /** @type {number|null} highest inbox seq delivered; null until known */
    this.lastSeq = options.history ? 0 : null;
    /** @type {string|null} inbox epoch from the last `SYNC` */
    this.epoch = null;
    /** @type {Map<string, Function[]>} */
    this.listeners = new Map();
    /** @type {Map<string, {op: object, resolve: Function, reject: Function, retry: boolean, timer: any, collect?: Message[]}>} */
    this.pending = new Map();
    /** @type {Set<string>} */
    this.rooms = new Set();
    this.roomIds = new Set();
    /** ids of the messages this client sent (their copies in the user's inbox are not events) */
    this.ownIds = new Set();
    this.nextCid = 1;
    this.cidPrefix = Math.random().toString(36).slice(2, 8);
    this.ws = null;
    /** true from `connect()` until `close()` or a fatal refusal: no more retries */
    this.closing = false;
    /** a `SYNC` is in flight (gaps seen meanwhile wait for its answer) */
    this.syncing = false;
    this.syncCid = null;
    /** highest seq seen, delivered or not: above `lastSeq` means another `SYNC` */
    this.maxSeen = 0;
    this.ackTimer = null;
    this.ackedSeq = 0;
    this.retryTimer = null;
    this.connectWaiters = [];
    this.alternatives = [];
  }

  /**
   * @param {string} event `message`, `state`, `gap`, `error` or `server`
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) {
    const list = this.listeners.get(event) ?? [];
    list.push(fn);
    this.listeners.set(event, list);
    return () => this.off(event, fn);
  }

  /**
   * @param {string} event
   * @param {Function} fn
   */
  off(event, fn) {
    const list = this.listeners.get(event);
    if (list) this.listeners.set(event, list.filter((f) => f !== fn));
  }

  /**
   * @param {string} event
   * @param {any} value
   */
  emit(event, value) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(value);
      } catch (e) {
        if (event !== 'error') this.emit('error', e);
      }
    }
  }

  /** @param {ConnectionState} s */
  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  /**
   * Connects and logs in; resolves once logged in. Rejects with
   * {@link AuthError} on a refused token (and stops), or with the first
   * failure otherwise while the client keeps retrying in the background
   * (wait for the `state` event `connected`).
   * @returns {Promise<void>}
   */
  connect() {
    if (this.state === 'connected') return Promise.resolve();
    const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.state === 'idle' || this.state === 'closed') {
      this.closing = false;
      this.setState('connecting');
      this.attempt();
    }
    return p;
  }

  /** Closes the connection for good; pending requests fail with `closed`. */
  close() {
    this.closing = true;
    clearInterval(this.pingTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.ackTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.send(JSON.stringify({ op: 'quit' }));
      } catch {
        // already closing
      }
      ws.close(1000);
    }
    this.failPending(new ConnectionError('closed', 'the client was closed'), true);
    this.settleConnect(new ConnectionError('closed', 'the client was closed'));
    this.setState('closed');
  }

  /** One connection attempt through the candidate URLs. */
  async attempt() {
    const candidates = [...new Set([...this.urls, ...this.alternatives])];
    let lastError = null;
    for (const url of candidates) {
      if (this.closing) return;
      try {
        await this.open(url);
        return;
      } catch (e) {
        lastError = e;
        if (e.fatal) {
          // Trying again cannot help (a refused token, a malformed name).
          this.fatal(e);
          return;
        }
        // Maybe full: ask it (or, when it is down, nobody) for servers with room.
        const more = await this.discover(url);
        for (const alt of more) if (!candidates.includes(alt)) candidates.push(alt);
      }
    }
    if (this.closing) return;
    this.settleConnect(lastError ?? new ConnectionError('disconnected', 'no server reachable'));
    this.scheduleRetry();
  }

  /**
   * `GET /servers` on the server of `url`: WebSocket URLs of servers with room.
   * @param {string} url
   * @returns {Promise<string[]>}
   */
  async discover(url) {
    if (!this.fetch) return [];
    try {
      const ctl = typeof AbortController === 'function' ? new AbortController() : null;
      const t = ctl ? setTimeout(() => ctl.abort(), 3000) : null;
      const res = await this.fetch(serversUrlOf(url), ctl ? { signal: ctl.signal } : undefined);
      clearTimeout(t);
      if (!res.ok) return [];
      const body = await res.json();
      const list = Array.isArray(body?.servers) ? body.servers : [];
      const urls = list.filter((s) => typeof s?.ws === 'string').map((s) => wsUrlOf(s.ws, url));
      for (const u of urls) if (!this.alternatives.includes(u)) this.alternatives.push(u);
      return urls;
    } catch {
      return [];
    }
  }

  scheduleRetry() {
    if (this.closing) return;
    this.setState('reconnecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.attempt(), this.backoff.next());
  }

  /**
   * Opens `url` and logs in; resolves when logged in, rejects when the socket
   * fails first or the login is refused.
   * @param {string} url
   */
  open(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this.WebSocket(url);
      } catch (e) {
        reject(new ConnectionError('disconnected', `cannot open ${url}: ${e?.message ?? e}`));
        return;
      }
      let loggedIn = false;
      const loginCid = this.cid();
      const openTimer = setTimeout(() => {
        if (!loggedIn) {
          ws.close();
          reject(new ConnectionError('timeout', `no login answer from ${url}`));
        }
      }, this.requestTimeoutMs);
      ws.onopen = () => {
        const op = { op: 'login', user: this.user, cid: loginCid };
        if (this.token) op.token = this.token;
        if (this.device) op.device = this.device;
        ws.send(JSON.stringify(op));
      };
      ws.onmessage = (ev) => {
        if (this.ws !== ws && loggedIn) return;
        const data = typeof ev.data === 'string' ? ev.data : String(ev.data);
        if (!loggedIn) {
          let m;
          try {
            m = JSON.parse(data);
          } catch {
            return;
          }
          if (m.cid !== loginCid) return;
          clearTimeout(openTimer);
          if (m.type === 'login') {
            loggedIn = true;
            this.ws = ws;
            this.server = url;
            this.onLoggedIn();
            resolve();
          } else if (m.type === 'error') {
            ws.close();
            const e = m.code === 'auth' ? new AuthError(m.message) : new SwitchboardError(m.code, m.message);
            e.fatal = FATAL_LOGIN_CODES.has(m.code);
            reject(e);
          }
          return;
        }
        this.onFrame(data);
      };
      ws.onclose = () => {
        clearTimeout(openTimer);
        if (!loggedIn) {
          reject(new ConnectionError('disconnected', `connection to ${url} closed before login`));
          return;
        }
        if (this.ws === ws) this.onLost();
      };
      ws.onerror = () => {
        // Before login an error ends the attempt (some implementations
        // fire no close for a refused handshake); after it, onclose decides.
        if (!loggedIn) {
          clearTimeout(openTimer);
          reject(new ConnectionError('disconnected', `cannot connect to ${url}`));
          // Closing a socket that failed to connect may fire `error` again,
          // at once: this handler must not run a second time.
          ws.onerror = null;
          try {
            ws.close();
          } catch {
            // not open
          }
        }
      };
    });
  }

  onLoggedIn() {
    this.backoff.reset();
    this.startLiveness();
    this.setState('connected');
    this.emit('server', this.server);
    this.settleConnect(null);
    for (const room of this.rooms) this.raw({ op: 'join', room });
    if (this.lastSeq !== null) this.startSync();
    // Sends not answered on the previous connection: the same cid again.
    for (const [cid, p] of this.pending) {
      if (p.retry) this.raw({ ...p.op, cid });
    }
  }

  /**
   * A `PING` every `pingIntervalMs`; no `PONG` within `requestTimeoutMs`
   * means the connection is dead even if the socket has not noticed (a
   * network gone silent): drop it and reconnect.
   */
  startLiveness() {
    clearInterval(this.pingTimer);
    const ws = this.ws;
    if (!this.pingIntervalMs) return;
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) {
        clearInterval(this.pingTimer);
        return;
      }
      this.request({ op: 'ping' }).catch((e) => {
        if (this.ws === ws && e.code === 'timeout') {
          ws.onclose = null;
          ws.onmessage = null;
          try {
            ws.close();
          } catch {
            // already closed
          }
          this.onLost();
        }
      });
    }, this.pingIntervalMs);
  }

  onLost() {
    clearInterval(this.pingTimer);
    this.ws = null;
    this.server = null;
    this.syncing = false;
    for (const [cid, p] of this.pending) {
      if (!p.retry) {
        this.pending.delete(cid);
        clearTimeout(p.timer);
        p.reject(new ConnectionError('disconnected', 'the connection was lost before the answer'));
      }
    }
    if (!this.closing) this.scheduleRetry();
  }

  /** @param {Error} e */
  fatal(e) {
    this.closing = true;
    clearInterval(this.pingTimer);
    this.failPending(e, true);
    this.settleConnect(e);
    this.setState('closed');
    this.emit('error', e);
  }

  /**
   * Resolves (or, with an error, rejects) the promises of `connect()`.
   * @param {Error|null} err
   */
  settleConnect(err) {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) (err ? w.reject(err) : w.resolve());
  }

  /**
   * @param {Error} err
   * @param {boolean} all also the sends that would be retried
   */
  failPending(err, all) {
    for (const [cid, p] of this.pending) {
      if (all || !p.retry) {
        this.pending.delete(cid);
        clearTimeout(p.timer);
        p.reject(err);
      }
    }
  }

  cid() {
    return `${this.cidPrefix}-${this.nextCid++}`;
  }

  /** @param {object} op */
  raw(op) {
    if (!this.ws) return false;
    try {
      this.ws.send(JSON.stringify(op));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends a request and waits for the answer with its cid.
   * @param {object} op
   * @param {{retry?: boolean, collect?: boolean}} [how] retry: send again after a reconnect (sends)
   * @returns {Promise<any>}
   */
  request(op, how = {}) {
    const retry = how.retry ?? false;
    if (!this.ws && !retry) {
      return Promise.reject(new ConnectionError('disconnected', `not connected (${this.state})`));
    }
    if (this.state === 'closed') return Promise.reject(new ConnectionError('closed', 'the client was closed'));
    const cid = this.cid();
    return new Promise((resolve, reject) => {
      const entry = { op, resolve, reject, retry, timer: null, collect: how.collect ? [] : undefined };
      if (!retry) {
        entry.timer = setTimeout(() => {
          this.pending.delete(cid);
          reject(new ConnectionError('timeout', `no answer to ${op.op} within ${this.requestTimeoutMs} ms`));
        }, this.requestTimeoutMs);
      }
      this.pending.set(cid, entry);
      this.raw({ ...op, cid });
    });
  }

  /** @param {string} data */
  onFrame(data) {
    if (!data.startsWith('{')) {
      const m = parseTextPush(data);
      if (m) this.onPush(m);
      return;
    }
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      this.emit('error', new SwitchboardError('json', 'unreadable frame from the server'));
      return;
    }
    const push = pushOf(m);
    if (push) {
      this.onPush(push);
      return;
    }
    if (m.type === 'gap') {
      this.onGap(m);
      return;
    }
    if (m.type === 'synced' && m.cid === this.syncCid) {
      this.onSynced(m);
    }
    const p = m.cid ? this.pending.get(m.cid) : undefined;
    if (!p) {
      if (m.type === 'error') this.emit('error', new SwitchboardError(m.code, m.message));
      if (m.type === 'bye') this.ws?.close();
      return;
    }
    this.pending.delete(m.cid);
    clearTimeout(p.timer);
    if (m.type === 'error') {
      p.reject(m.code === 'auth' ? new AuthError(m.message) : new SwitchboardError(m.code, m.message));
    } else {
      p.resolve(p.collect ? { reply: m, messages: p.collect } : m);
    }
  }

  /** @param {Message} m */
  onPush(m) {
    if (m.kind === 'direct') {
      this.onDirect(m);
      return;
    }
    if (m.kind === 'room') {
      // A HISTORY answer in progress for this room: its replay goes there.
      for (const p of this.pending.values()) {
        if (p.collect && p.op.room === m.room) {
          p.collect.push(m);
          return;
        }
      }
      // A room message is pushed once per session; after a reconnect, once more is possible.
      if (this.roomIds.has(m.id)) return;
      this.roomIds.add(m.id);
      if (this.roomIds.size > ROOM_IDS_KEPT) this.roomIds.delete(this.roomIds.values().next().value);
    }
    this.emit('message', m);
  }

  /** Delivers a direct message once, in seq order; a gap starts a `SYNC`. */
  onDirect(m) {
    const seq = /** @type {number} */ (m.seq);
    this.maxSeen = Math.max(this.maxSeen, seq);
    if (this.lastSeq === null) this.lastSeq = seq - 1;
    if (seq <= this.lastSeq) return; // already delivered
    if (seq > this.lastSeq + 1) {
      // Something is missing before it: fetch it in order.
      if (!this.syncing) this.startSync();
      return;
    }
    this.lastSeq = seq;
    // The user's inbox holds what they sent too; what this client sent it
    // already knows from `send`, so only its seq is taken.
    if (m.from === this.user && this.ownIds.has(m.id)) return;
    this.emit('message', m);
    this.scheduleAck();
  }

  startSync() {
    if (!this.ws || this.lastSeq === null) return;
    this.syncing = true;
    this.syncCid = this.cid();
    const op = { op: 'sync', after: this.lastSeq, cid: this.syncCid };
    if (this.epoch) op.epoch = this.epoch;
    this.raw(op);
  }

  onSynced(m) {
    this.syncing = false;
    if (typeof m.epoch === 'string') this.epoch = m.epoch;
    if (typeof m.last === 'number' && this.lastSeq !== null && m.last > this.lastSeq) this.lastSeq = m.last;
    if (this.lastSeq !== null && this.maxSeen > this.lastSeq) this.startSync();
  }

  /** `ERR gap`: messages that cannot be replayed; skip past them. */
  onGap(m) {
    const from = Number(m.from);
    const to = Number(m.to);
    if (this.lastSeq !== null && from <= this.lastSeq) {
      // The inbox was reset: its numbering starts again.
      this.lastSeq = 0;
      this.maxSeen = 0;
      this.ackedSeq = 0;
    } else if (this.lastSeq !== null && to > this.lastSeq) {
      this.lastSeq = to;
    }
    this.emit('gap', { from, to, reason: m.message ?? '' });
  }

  scheduleAck() {
    if (!this.autoAck || this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      if (this.lastSeq !== null && this.lastSeq > this.ackedSeq && this.raw({ op: 'ack', seq: this.lastSeq })) {
        this.ackedSeq = this.lastSeq;
      }
    }, 200);
  }

  /**
   * Sends a direct message; resolves once stored (`OK SENT`). If the
   * connection drops first it is sent again after the reconnect with the
   * same cid, and stored once.
   * @param {string} to
   * @param {string} text
   * @returns {Promise<{id: string, seq: number}>}
   */
  async send(to, text) {
    const r = await this.request({ op: 'send', to, text }, { retry: true });
    this.ownIds.add(r.id);
    if (this.ownIds.size > OWN_IDS_KEPT) this.ownIds.delete(this.ownIds.values().next().value);
    return { id: r.id, seq: r.seq };
  }

  /**
   * Sends a transient direct message (`TELL`): delivered to the user's live
   * sessions only, never stored.
   * @param {string} to
   * @param {string} text
   * @returns {Promise<void>}
   */
  async tell(to, text) {
    await this.request({ op: 'tell', to, text });
  }

  /**
   * Joins a room (and joins it again after every reconnect).
   * @param {string} room
   */
  async join(room) {
    this.rooms.add(room);
    await this.request({ op: 'join', room });
  }

  /** @param {string} room */
  async leave(room) {
    this.rooms.delete(room);
    await this.request({ op: 'leave', room });
  }

  /**
   * Publishes to a room; resolves with the message id once stored.
   * @param {string} room
   * @param {string} text
   * @returns {Promise<{id: string}>}
   */
  async publish(room, text) {
    const r = await this.request({ op: 'pub', room, text });
    return { id: r.id };
  }

  /**
   * A room's latest messages, oldest first.
   * @param {string} room
   * @param {number} [count]
   * @returns {Promise<Message[]>}
   */
  async history(room, count) {
    const op = { op: 'history', room };
    if (count !== undefined) op.count = count;
    const r = await this.request(op, { collect: true });
    return r.messages;
  }

  /**
   * Replays the inbox after `after` (delivered as `message` events, each seq
   * once); resolves with the last seq and the inbox epoch.
   * @param {number} [after] default: from the start
   * @returns {Promise<{last: number, epoch: string}>}
   */
  async sync(after = 0) {
    if (this.lastSeq === null || after < this.lastSeq) this.lastSeq = after;
    const op = { op: 'sync', after };
    if (this.epoch) op.epoch = this.epoch;
    this.syncing = true;
    let r;
    try {
      r = await this.request(op);
    } catch (e) {
      this.syncing = false;
      throw e;
    }
    this.onSynced(r);
    return { last: r.last, epoch: r.epoch };
  }

  /**
   * Marks the inbox read up to `seq` on this device.
   * @param {number} seq
   */
  ack(seq) {
    if (this.raw({ op: 'ack', seq })) this.ackedSeq = Math.max(this.ackedSeq, seq);
  }

  /**
   * @param {string} user
   * @returns {Promise<{online: boolean, sessions: number}>}
   */
  async who(user) {
    const r = await this.request({ op: 'who', user });
    return { online: !!r.online, sessions: r.sessions ?? 0 };
  }
}
