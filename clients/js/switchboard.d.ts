// Types of switchboard.js (hand-written to match its JSDoc; no build step).

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface Message {
  /** direct (stored, has a seq), room, broadcast, or transient TELL */
  kind: 'direct' | 'room' | 'all' | 'tell';
  /** the recipient's inbox sequence number (direct only) */
  seq: number | null;
  from: string;
  to: string | null;
  room: string | null;
  id: string;
  /** unix time in milliseconds */
  ts: number;
  text: string;
}

export interface Gap {
  from: number;
  to: number;
  reason: string;
}

export interface ClientOptions {
  /** WebSocket URL(s) of message servers, e.g. ws://127.0.0.1:9001/ws; tried in order */
  url: string | string[];
  user: string;
  /** a signed token (omit in dev mode) */
  token?: string;
  /** which of the user's devices this is (its ACK cursor) */
  device?: string;
  /** replay the whole inbox on the first login (default false) */
  history?: boolean;
  /** acknowledge delivered direct messages (default true) */
  autoAck?: boolean;
  /** first reconnect delay in ms (default 250) */
  backoffMs?: number;
  /** longest reconnect delay in ms (default 5000) */
  maxBackoffMs?: number;
  /** how long a request waits for its answer (default 15000) */
  requestTimeoutMs?: number;
  /** how often to check the connection with PING (default 25000; 0: never) */
  pingIntervalMs?: number;
  /** a WebSocket constructor (default: the global one) */
  WebSocket?: typeof WebSocket;
  /** a fetch function for GET /servers (default: the global one) */
  fetch?: typeof fetch;
}

export class SwitchboardError extends Error {
  constructor(code: string, message: string);
  /** set on a login refusal that retrying cannot cure */
  fatal?: boolean;
  /** the server's error code (syntax, auth, full, rate, ...) or closed, timeout, disconnected */
  code: string;
}
export class AuthError extends SwitchboardError {
  constructor(message: string);
}
export class ConnectionError extends SwitchboardError {
  constructor(code: string, message: string);
}

export class Backoff {
  constructor(firstMs: number, maxMs: number);
  next(jitter?: number): number;
  reset(): void;
}

export function parseTextPush(line: string): Message | null;
export function serversUrlOf(url: string): string;

export class Client {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  /** the URL of the current connection */
  readonly server: string | null;
  /** highest inbox seq delivered; null until known */
  readonly lastSeq: number | null;
  readonly rooms: Set<string>;
  on(event: 'message', fn: (m: Message) => void): () => void;
  on(event: 'state', fn: (s: ConnectionState) => void): () => void;
  on(event: 'gap', fn: (g: Gap) => void): () => void;
  on(event: 'error', fn: (e: Error) => void): () => void;
  on(event: 'server', fn: (url: string) => void): () => void;
  off(event: string, fn: Function): void;
  connect(): Promise<void>;
  close(): void;
  send(to: string, text: string): Promise<{ id: string; seq: number }>;
  tell(to: string, text: string): Promise<void>;
  join(room: string): Promise<void>;
  leave(room: string): Promise<void>;
  publish(room: string, text: string): Promise<{ id: string }>;
  history(room: string, count?: number): Promise<Message[]>;
  sync(after?: number): Promise<{ last: number; epoch: string }>;
  ack(seq: number): void;
  who(user: string): Promise<{ online: boolean; sessions: number }>;
}
