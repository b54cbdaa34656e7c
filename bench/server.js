// The peer Switchboard is measured against: what people deploy today for
// cross-server WebSocket messaging. One socket.io 4.8 server with the Redis
// adapter; run two of them on the same Redis and every emit to a room is
// published to Redis and decoded by every node.
//
// - transports: WebSocket only (no long-polling upgrade dance);
// - a socket joins the room named after its user (handshake query `user`);
// - a `dm` event `{to, text}` is re-emitted as `dm` `{from, to, text}` to the
//   room of `to`, wherever that user is connected.
//
// ADAPTER picks how the nodes talk: `redis` (default, `@socket.io/redis-adapter`
// 8.3: PUBLISH per emit, nothing stored) or `streams`
// (`@socket.io/redis-streams-adapter` 0.3: XADD of every packet to one stream
// that every node XREADs; on a Redis with appendfsync always, the nearest
// durable peer).
//
// Environment: REDIS_URL (redis://127.0.0.1:6379/), HOST (127.0.0.1),
// PORT (0 = pick a free port), NAME (shown in the log line), ADAPTER.
// On start it prints `listening ws=HOST:PORT name=NAME pid=PID`, which
// scripts/bench parses, as it does the Rust servers' log lines.

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const streams = require("@socket.io/redis-streams-adapter");
const { createClient } = require("redis");

const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/";
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 0);
const name = process.env.NAME || "sio";
const adapterKind = process.env.ADAPTER || "redis";

async function main() {
  if (adapterKind !== "redis" && adapterKind !== "streams") {
    throw new Error(`ADAPTER must be redis or streams, not ${adapterKind}`);
  }
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) {
    c.on("error", (err) => console.error(`${name}: redis error: ${err.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`ok ${io.engine.clientsCount}\n`);
      return;
    }
    res.writeHead(404);
    res.end();
  });

  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    adapter: adapterKind === "streams" ? streams.createAdapter(pub) : createAdapter(pub, sub),
  });

  io.on("connection", (socket) => {
    const user = socket.handshake.query.user;
    if (typeof user !== "string" || user.length === 0) {
      socket.disconnect(true);
      return;
    }
    socket.join(user);
    socket.on("dm", (m) => {
      if (!m || typeof m.to !== "string" || typeof m.text !== "string") {
        return;
      }
      io.to(m.to).emit("dm", { from: user, to: m.to, text: m.text });
    });
  });

  httpServer.listen(port, host, () => {
    const a = httpServer.address();
    console.log(`listening ws=${a.address}:${a.port} name=${name} pid=${process.pid}`);
  });

  const stop = () => {
    io.close(() => {
      Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(`${name}: ${err.stack || err}`);
  process.exit(1);
});
