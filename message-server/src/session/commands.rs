//! One function per command, in the shape of mini-redis's `Command::apply`:
//! [`Session::apply`] dispatches a parsed [`Request`], and each command's
//! function takes only what it uses (the hub, the store, the directory, the
//! session's rooms), not the whole server state.
//!
//! `SEND`, `PUB` and `ALL` are handed to the router ([`crate::router`]) and
//! answered from there once stored; the others are answered here. `TELL`
//! and `SAY` are transient (at most once): pushed straight to the sessions
//! here and through the relay, never stored, and answered only with `ERR`.

use std::sync::Arc;

use shared::client::{ClientError, Command, Encoding, ErrCode, Event, Reply, Request};
use shared::ids::SessionId;
use shared::link::{BROADCAST_ROOM, DirectMsg, Frame, RoomMsg};

use super::{Flow, Session};
use crate::conn::{Close, Conn, code};
use crate::directory::Directory;
use crate::hub::{Hub, SessionHandle};
use crate::relay_link::{Links, copies};
use crate::router::{Job, Origin};
use crate::state::Login;
use crate::store::Store;
use entry::now_ms;

impl Session {
    /// Carries out one request and answers it (or hands it on).
    pub(super) async fn apply<C: Conn>(&mut self, conn: &mut C, req: Request) -> Flow {
        let Request { cmd, enc, cid } = req;
        let cid = cid.as_deref();
        let reply: Reply = match cmd {
            Command::Ping => Reply::Pong,
            Command::Help => Reply::Help,
            Command::Quit => return Flow::Quit(enc, cid.map(str::to_owned)),
            Command::Login {
                user,
                token,
                device,
            } => match self.login(user, token, device).await {
                Ok(reply) => {
                    if let Flow::Close(c) = self.answer(conn, enc, cid, reply).await {
                        return Flow::Close(c);
                    }
                    // What arrived while this device was away.
                    return self.replay_unacked(conn).await;
                }
                Err(e) if e.code == ErrCode::Limit => {
                    // Past --max-sessions-per-user: told why, then closed.
                    if let Flow::Close(c) = self.answer(conn, enc, cid, e.into()).await {
                        return Flow::Close(c);
                    }
                    return Flow::Close(Close::new(
                        code::POLICY,
                        Some(ErrCode::Limit),
                        "too many sessions for this user",
                    ));
                }
                Err(e) => e.into(),
            },
            _ if self.user.is_none() => {
                ClientError::new(ErrCode::Login, "log in first: LOGIN <user> [<token>]").into()
            }
            Command::Send { to, text } => {
                let msg = self.direct_msg(to, text);
                return self
                    .submit(conn, enc, cid, |origin| Job::Send { msg, origin })
                    .await;
            }
            Command::Tell { to, text } => {
                let msg = self.direct_msg(to, text);
                return match tell(self.fanout(), &self.state.directory, msg).await {
                    Ok(()) => Flow::Continue,
                    Err(err) => self.answer(conn, enc, cid, err).await,
                };
            }
            Command::Say { room, text } => {
                let msg = self.room_msg(room, text);
                say(self.fanout(), msg);
                return Flow::Continue;
            }
            Command::Pub { room, text } => {
                let msg = self.room_msg(room, text);
                return self
                    .submit(conn, enc, cid, |origin| Job::Publish { msg, origin })
                    .await;
            }
            Command::All { .. } if !self.admin => ClientError::new(
                ErrCode::Forbidden,
                "broadcast to everyone needs the admin role",
            )
            .into(),
            Command::All { text } => {
                let msg = self.room_msg(BROADCAST_ROOM.to_owned(), text);
                return self
                    .submit(conn, enc, cid, |origin| Job::Broadcast { msg, origin })
                    .await;
            }
            Command::Join { room } => join(
                &self.state.hub,
                &self.state.links,
                &mut self.rooms,
                &self.handle,
                room,
            ),
            Command::Leave { room } => leave(
                &self.state.hub,
                &self.state.links,
                &mut self.rooms,
                &self.handle,
                room,
            ),
            Command::Ack { seq } => {
                let user = self.user_name();
                match ack(&self.state.store, self.handle.id, &user, &self.device, seq).await {
                    None => return Flow::Continue,
                    Some(err) => err,
                }
            }
            Command::Sync { after, epoch } => return self.sync(conn, enc, cid, after, epoch).await,
            Command::History { room, count } => {
                let bound = self.state.limits.room_history;
                return match history(
                    conn,
                    &self.state.store,
                    self.handle.id,
                    bound,
                    enc,
                    room,
                    count,
                )
                .await
                {
                    Ok(reply) => self.answer(conn, enc, cid, reply).await,
                    Err(close) => Flow::Close(close),
                };
            }
            Command::Who { user } => who(&self.state.directory, self.handle.id, user).await,
        };
        self.answer(conn, enc, cid, reply).await
    }

    /// `LOGIN`: checks the user (token or insecure mode), records the
    /// session in Redis and in the hub.
    async fn login(
        &mut self,
        user: String,
        token: Option<String>,
        device: Option<String>,
    ) -> Result<Reply, ClientError> {
        if let Some(current) = &self.user {
            return Err(ClientError::new(
                ErrCode::Login,
                format!("already logged in as {current}"),
            ));
        }
        let admin = authenticate(&self.state.login, &user, token)?;
        match self
            .state
            .directory
            .add_session(&user, self.handle.id)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(crate::directory::TooManySessions)) => {
                return Err(ClientError::new(
                    ErrCode::Limit,
                    format!("too many sessions for {user}"),
                ));
            }
            Err(e) => {
                crate::warn_limited!(session = %self.handle.id, %user, error = %e, "session not recorded; login refused");
                return Err(ClientError::new(
                    ErrCode::Unavailable,
                    "cannot log in: the directory is unavailable; try again",
                ));
            }
        }
        self.admin = admin;
        if self.state.hub.add(&user, self.handle.clone()) {
            // The other servers' presence caches may say the user is not
            // here: after the Redis write, so a lookup they make from now
            // on finds this session.
            self.state
                .links
                .tell_all(Frame::Presence { user: user.clone() });
        }
        tracing::Span::current().record("user", user.as_str());
        tracing::debug!("logged in");
        self.device = device.unwrap_or_else(|| "default".to_owned());
        self.user = Some(user.clone());
        Ok(Reply::LoggedIn {
            user,
            session: self.handle.id,
        })
    }

    /// Hands a job to the router, which answers it once stored. A full
    /// router queue makes this session wait: backpressure.
    async fn submit<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        job: impl FnOnce(Origin) -> Job,
    ) -> Flow {
        let origin = Origin {
            session: self.handle.clone(),
            enc,
            cid: cid.map(str::to_owned),
        };
        self.pending += 1;
        if self.state.router.send(job(origin)).await.is_err() {
            self.pending -= 1;
            let err = ClientError::new(ErrCode::Unavailable, "server is shutting down");
            return self.answer(conn, enc, cid, err.into()).await;
        }
        Flow::Continue
    }

    /// Where this session's transient messages go.
    fn fanout(&self) -> Fanout<'_> {
        Fanout {
            hub: &self.state.hub,
            links: &self.state.links,
            me: self.handle.id,
        }
    }

    fn direct_msg(&self, to: String, text: String) -> DirectMsg {
        DirectMsg {
            id: self.state.ids.message(),
            from: self.user_name(),
            to,
            ts: now_ms(),
            text,
        }
    }

    fn room_msg(&self, room: String, text: String) -> RoomMsg {
        RoomMsg {
            room,
            from: self.user_name(),
            id: self.state.ids.message(),
            ts: now_ms(),
            text,
        }
    }
}

/// Checks who `user` is; returns whether they may broadcast.
fn authenticate(login: &Login, user: &str, token: Option<String>) -> Result<bool, ClientError> {
    match login {
        Login::Insecure => Ok(true),
        Login::Token(auth) => {
            let Some(token) = token else {
                return Err(ClientError::new(
                    ErrCode::Auth,
                    "a token is required: LOGIN <user> <token>",
                ));
            };
            let claims = auth
                .verify_user(&token, user)
                .map_err(|e| ClientError::new(ErrCode::Auth, e.to_string()))?;
            Ok(claims.admin)
        }
    }
}

/// Where a transient message goes: this server's sessions and the relays.
struct Fanout<'a> {
    hub: &'a Hub,
    links: &'a Links,
    /// The sending session, which never gets its own message.
    me: SessionId,
}

/// `TELL`: every session of the recipient and every other session of the
/// sender, here and on other servers (found in the presence cache, or with
/// one Redis read per user when it has no fresh entry; skipped when no
/// relay link is up), at most once. Nothing is stored; a recipient that is
/// offline simply gets nothing.
async fn tell(out: Fanout<'_>, directory: &Directory, msg: DirectMsg) -> Result<(), Reply> {
    let note_to_self = msg.from == msg.to;
    let to_except = note_to_self.then_some(out.me);
    // Made at most once, and only when a session here gets it.
    let mut event = None;
    let mut event = || Arc::clone(event.get_or_insert_with(|| Arc::new(Event::Tell(msg.clone()))));
    out.hub.push_user_with(&msg.to, to_except, &mut event);
    if !note_to_self {
        out.hub.push_user_with(&msg.from, Some(out.me), &mut event);
    }
    if out.links.up() == 0 {
        return Ok(());
    }
    let [to_servers, from_servers] = match directory.servers_of([&msg.to, &msg.from]).await {
        Ok(servers) => servers,
        Err(e) => {
            crate::warn_limited!(session = %out.me, to = %msg.to, error = %e, "tell: sessions not looked up");
            return Err(ClientError::new(
                ErrCode::Unavailable,
                "tell reached this server's sessions only: the directory is unavailable",
            )
            .into());
        }
    };
    // (server, user, except) per frame; the message itself is moved into
    // the last one rather than cloned.
    let to = to_servers.iter().map(|s| (s, &msg.to, to_except));
    let from = from_servers
        .iter()
        .filter(|_| !note_to_self)
        .map(|s| (s, &msg.from, Some(out.me)));
    let targets: Vec<_> = to
        .chain(from)
        .map(|(s, user, except)| (String::from(&**s), user.clone(), except))
        .collect();
    let n = targets.len();
    for ((to_server, user, except), msg) in targets.into_iter().zip(copies(msg, n)) {
        out.links.send(Frame::Tell {
            to_server,
            user,
            except,
            msg,
        });
    }
    Ok(())
}

/// `SAY`: the room's members here and, through the relay, elsewhere; not
/// in the room's history.
fn say(out: Fanout<'_>, msg: RoomMsg) {
    let event = Arc::new(Event::Room(msg.clone()));
    out.hub.push_room(&msg.room, &event, Some(out.me));
    out.links.send(Frame::Room { msg });
}

/// `JOIN`: the first local member of a room tells the relays.
fn join(
    hub: &Hub,
    links: &Links,
    rooms: &mut Vec<String>,
    me: &SessionHandle,
    room: String,
) -> Reply {
    if !rooms.contains(&room) {
        if hub.join(&room, me.clone()) {
            links.tell_all(Frame::Interest {
                room: room.clone(),
                on: true,
            });
        }
        rooms.push(room.clone());
    }
    Reply::Joined { room }
}

/// `LEAVE`: the last local member of a room tells the relays.
fn leave(
    hub: &Hub,
    links: &Links,
    rooms: &mut Vec<String>,
    me: &SessionHandle,
    room: String,
) -> Reply {
    if let Some(i) = rooms.iter().position(|r| *r == room) {
        rooms.swap_remove(i);
        if hub.leave(&room, me.id) {
            links.tell_all(Frame::Interest {
                room: room.clone(),
                on: false,
            });
        }
    }
    Reply::Left { room }
}

/// `ACK`: no answer unless the cursor could not be stored.
async fn ack(
    store: &Store,
    session: SessionId,
    user: &str,
    device: &str,
    seq: u64,
) -> Option<Reply> {
    match store.ack(user, device, seq).await {
        Ok(()) => None,
        Err(e) => {
            crate::warn_limited!(%session, %user, error = %e, "ack not stored");
            Some(
                ClientError::new(
                    ErrCode::Unavailable,
                    "ack not stored: storage is unavailable",
                )
                .into(),
            )
        }
    }
}

/// `HISTORY`: the room's latest messages (at most `bound`), then the count.
async fn history<C: Conn>(
    conn: &mut C,
    store: &Store,
    session: SessionId,
    bound: u64,
    enc: Encoding,
    room: String,
    count: Option<u64>,
) -> Result<Reply, Close> {
    let count = count.unwrap_or(bound).min(bound);
    match store.room_history(&room, count).await {
        Ok(messages) => {
            let n = messages.len() as u64;
            for msg in messages {
                if conn.feed(Event::Room(msg).render(enc)).await.is_err() {
                    return Err(Close::new(code::GOING_AWAY, None, "write failed"));
                }
            }
            Ok(Reply::History { room, count: n })
        }
        Err(e) => {
            crate::warn_limited!(%session, %room, error = %e, "room history not read");
            Ok(ClientError::new(
                ErrCode::Unavailable,
                "room history is unavailable right now",
            )
            .into())
        }
    }
}

/// `WHO`: how many sessions `user` has across the cluster.
async fn who(directory: &Directory, session: SessionId, user: String) -> Reply {
    match directory.who(&user).await {
        Ok(0) => Reply::Offline { user },
        Ok(n) => Reply::Online { user, sessions: n },
        Err(e) => {
            crate::warn_limited!(%session, %user, error = %e, "who failed");
            ClientError::new(ErrCode::Unavailable, "presence is unavailable right now").into()
        }
    }
}
