//! Replaying an inbox to one device: at login (what it has not
//! acknowledged) and on `SYNC <after> [<epoch>]`.
//!
//! What to send is decided by [`plan`], a pure function of the device's
//! cursor and what the inbox holds; `Session::replay` only reads pages and
//! writes lines. A client never sees a silent gap: an inbox that was reset
//! (flushed, lost: its epoch changed, or it is behind the cursor) is
//! announced and replayed from its start, and messages trimmed by the inbox
//! bound are announced as a gap before the first one still held.

use std::time::Duration;

use shared::client::{ClientError, Encoding, ErrCode, Event, Reply};

use super::{Flow, Session};
use crate::conn::{Close, Conn, code};

/// Messages read from an inbox per Redis round trip during a replay.
const REPLAY_PAGE: usize = 500;

/// The longest a catch-up may take (reads and writes); past it the session
/// goes on and the next wake-up tries again.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// Who a replay is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The device asked (login, `SYNC`): everything after its cursor.
    Device,
    /// The server's own catch-up: only what this session was not written.
    CatchUp,
}

/// What an inbox looks like from after a device's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxView<'a> {
    /// The last seq ever given in this inbox.
    pub head: u64,
    /// The inbox's current epoch.
    pub epoch: &'a str,
    /// The first seq still held after the cursor, if any.
    pub first_held: Option<u64>,
}

/// What a replay sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The inbox the client knows is gone: announce `gap 1..=cursor`, then
    /// plan again from seq 0 (with the inbox as read from there).
    Reset { to: u64 },
    /// Replay from after `from`, announcing `gap` (trimmed by the bound)
    /// first when there is one.
    Replay { from: u64, gap: Option<(u64, u64)> },
}

/// Decides what to send a device whose cursor is `after` (and who believes
/// the inbox has epoch `epoch`, when it says so).
pub fn plan(after: u64, epoch: Option<&str>, inbox: InboxView<'_>) -> Plan {
    let lost = after > inbox.head || epoch.is_some_and(|e| e != inbox.epoch);
    if lost && after > 0 {
        return Plan::Reset { to: after };
    }
    let first_held = inbox.first_held.unwrap_or(inbox.head + 1);
    let gap = (first_held > after + 1 && inbox.head > after).then(|| (after + 1, first_held - 1));
    Plan::Replay { from: after, gap }
}

impl Session {
    /// Login replay: what this device has not acknowledged.
    pub(super) async fn replay_unacked<C: Conn>(&mut self, conn: &mut C) -> Flow {
        let user = self.user_name();
        match self.state.store.cursor(&user, &self.device).await {
            Ok(cursor) => match self.replay(conn, cursor, None, Mode::Device).await {
                Ok(_) => Flow::Continue,
                Err(flow) => flow,
            },
            Err(e) => {
                crate::warn_limited!(session = %self.handle.id, %user, error = %e, "cursor not read; skipping login replay");
                Flow::Continue
            }
        }
    }

    /// `SYNC`: the replay in the encoding it was asked in, then `OK SYNC`.
    pub(super) async fn sync<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        after: u64,
        epoch: Option<String>,
    ) -> Flow {
        let saved = self.enc;
        self.enc = enc;
        let result = self.replay(conn, after, epoch, Mode::Device).await;
        self.enc = saved;
        match result {
            Ok((last, epoch)) => {
                self.answer(conn, enc, cid, Reply::Synced { last, epoch })
                    .await
            }
            Err(flow) => flow,
        }
    }

    /// Brings this session up to its inbox head: reads from the last seq
    /// written to it and writes what it has not had, in order. Redis
    /// failing is not the client's business (logged; the next wake-up tries
    /// again); only a failed write is an error.
    pub(super) async fn catch_up<C: Conn>(
        &mut self,
        conn: &mut C,
    ) -> Result<(), crate::conn::WriteError> {
        self.catch_up_failed = false;
        let after = self.pushed_upto;
        let run = async {
            let epoch = self.known_epoch().await?;
            self.replay(conn, after, epoch, Mode::CatchUp).await
        };
        match tokio::time::timeout(CATCH_UP_LIMIT, run).await {
            Ok(Ok(_)) | Ok(Err(Flow::Continue | Flow::Quit(..))) => Ok(()),
            Ok(Err(Flow::Close(c))) => Err(crate::conn::WriteError::new(c.reason)),
            Err(_) => {
                crate::warn_limited!(session = %self.handle.id, "catch-up timed out; the next wake-up tries again");
                self.catch_up_failed = true;
                Ok(())
            }
        }
    }

    /// The epoch of the inbox this session was written from, for [`plan`]
    /// to tell an inbox that started over. Read at login or by an earlier
    /// catch-up; when it is not known yet (the inbox was empty then), the
    /// last message written must still be in the inbox with its id, or the
    /// inbox started over (`Some` of an epoch no inbox has).
    async fn known_epoch(&mut self) -> Result<Option<String>, Flow> {
        if !self.epoch.is_empty() {
            return Ok(Some(self.epoch.clone()));
        }
        let Some((seq, id)) = self.last_written.clone() else {
            return Ok(None);
        };
        let user = self.user_name();
        match self.state.store.read_inbox(&user, seq - 1, 1).await {
            Ok(page) => {
                let same = page
                    .messages
                    .first()
                    .is_some_and(|(s, m)| *s == seq && *m.id == *id);
                Ok(Some(if same { page.epoch } else { "lost".to_owned() }))
            }
            Err(e) => {
                crate::warn_limited!(session = %self.handle.id, %user, error = %e, "inbox not read for a catch-up; the next wake-up tries again");
                self.catch_up_failed = true;
                Err(Flow::Continue)
            }
        }
    }

    /// Whether inbox message `seq` was written to this session already.
    pub(super) fn written(&self, seq: u64) -> bool {
        seq <= self.pushed_upto || self.ahead.contains(&seq)
    }

    /// Notes that inbox message `seq` was written to this session.
    pub(super) fn mark(&mut self, seq: u64) {
        if seq <= self.pushed_upto {
            return;
        }
        if seq == self.pushed_upto + 1 {
            self.pushed_upto = seq;
        } else {
            self.ahead.insert(seq);
        }
        self.compact();
    }

    /// Moves `pushed_upto` over the seqs in `ahead` that now follow it.
    fn compact(&mut self) {
        while let Some(&first) = self.ahead.first() {
            if first <= self.pushed_upto {
                self.ahead.pop_first();
            } else if first == self.pushed_upto + 1 {
                self.pushed_upto = first;
                self.ahead.pop_first();
            } else {
                break;
            }
        }
    }

    /// Writes the inbox after `after` as [`plan`] says. Returns the last
    /// seq written (or where it started) and the inbox epoch.
    async fn replay<C: Conn>(
        &mut self,
        conn: &mut C,
        after: u64,
        epoch: Option<String>,
        mode: Mode,
    ) -> Result<(u64, String), Flow> {
        let user = self.user_name();
        let store = self.state.store.clone();
        let mut epoch = epoch;
        let mut after = after;
        let (mut page, from) = loop {
            let page = match store.read_inbox(&user, after, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => return Err(self.unavailable(conn, &user, &e, mode).await),
            };
            let view = InboxView {
                head: page.head,
                epoch: &page.epoch,
                first_held: page.messages.first().map(|(s, _)| *s),
            };
            match plan(after, epoch.as_deref(), view) {
                Plan::Reset { to } => {
                    let gap = Reply::Gap {
                        from: 1,
                        to,
                        reason: "inbox was reset; replaying it from the start".to_owned(),
                    };
                    self.say(conn, gap).await?;
                    after = 0;
                    epoch = None;
                    if mode == Mode::CatchUp {
                        // The inbox this session was written from is gone.
                        self.pushed_upto = 0;
                        self.ahead.clear();
                    }
                }
                Plan::Replay { from, gap } => {
                    if let Some((from, to)) = gap {
                        let gap = Reply::Gap {
                            from,
                            to,
                            reason: "trimmed by the inbox bound".to_owned(),
                        };
                        self.say(conn, gap).await?;
                    }
                    break (page, from);
                }
            }
        };
        let mut last = from;
        loop {
            let full = page.messages.len() == REPLAY_PAGE;
            for (seq, msg) in page.messages.drain(..) {
                last = seq;
                if mode == Mode::CatchUp {
                    if self.written(seq) {
                        continue;
                    }
                    self.state.metrics.caught_up.inc();
                }
                self.last_written = Some((seq, msg.id.as_str().into()));
                let line = Event::Direct { seq, msg }.render(self.enc);
                if conn.feed(line).await.is_err() {
                    return Err(write_failed());
                }
            }
            if conn.flush().await.is_err() {
                return Err(write_failed());
            }
            if !full {
                break;
            }
            page = match store.read_inbox(&user, last, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => return Err(self.unavailable(conn, &user, &e, mode).await),
            };
        }
        self.pushed_upto = self.pushed_upto.max(last);
        self.compact();
        self.epoch.clone_from(&page.epoch);
        Ok((last, page.epoch))
    }

    /// Writes `reply` in the session's encoding; a failed write ends the replay.
    async fn say<C: Conn>(&mut self, conn: &mut C, reply: Reply) -> Result<(), Flow> {
        match self.answer(conn, self.enc, None, reply).await {
            Flow::Close(c) => Err(Flow::Close(c)),
            _ => Ok(()),
        }
    }

    async fn unavailable<C: Conn>(
        &mut self,
        conn: &mut C,
        user: &str,
        e: &crate::db::DbError,
        mode: Mode,
    ) -> Flow {
        if mode == Mode::CatchUp {
            crate::warn_limited!(session = %self.handle.id, %user, error = %e, "inbox not read for a catch-up; the next wake-up tries again");
            self.catch_up_failed = true;
            return Flow::Continue;
        }
        crate::warn_limited!(session = %self.handle.id, %user, error = %e, "inbox not read");
        let err = ClientError::new(
            ErrCode::Unavailable,
            "inbox is unavailable right now; SYNC again",
        );
        self.answer(conn, self.enc, None, err.into()).await
    }
}

fn write_failed() -> Flow {
    Flow::Close(Close::new(code::GOING_AWAY, None, "write failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(head: u64, epoch: &str, first_held: Option<u64>) -> InboxView<'_> {
        InboxView {
            head,
            epoch,
            first_held,
        }
    }

    #[test]
    fn a_device_that_is_behind_gets_the_rest() {
        assert_eq!(
            plan(3, None, view(7, "e1", Some(4))),
            Plan::Replay { from: 3, gap: None }
        );
        assert_eq!(
            plan(3, Some("e1"), view(7, "e1", Some(4))),
            Plan::Replay { from: 3, gap: None }
        );
    }

    #[test]
    fn an_up_to_date_device_gets_nothing_and_no_gap() {
        assert_eq!(
            plan(7, Some("e1"), view(7, "e1", None)),
            Plan::Replay { from: 7, gap: None }
        );
        // A fresh device on an empty inbox.
        assert_eq!(
            plan(0, None, view(0, "", None)),
            Plan::Replay { from: 0, gap: None }
        );
    }

    #[test]
    fn trimmed_messages_are_a_gap_before_the_first_held() {
        assert_eq!(
            plan(2, None, view(10, "e1", Some(6))),
            Plan::Replay {
                from: 2,
                gap: Some((3, 5))
            }
        );
        // Everything after the cursor aged out: the gap runs to the head.
        assert_eq!(
            plan(2, None, view(10, "e1", None)),
            Plan::Replay {
                from: 2,
                gap: Some((3, 10))
            }
        );
    }

    #[test]
    fn a_new_epoch_or_a_cursor_past_the_head_resets() {
        assert_eq!(
            plan(5, Some("old"), view(9, "new", Some(6))),
            Plan::Reset { to: 5 }
        );
        // Redis lost the inbox: the head is behind the cursor.
        assert_eq!(plan(5, None, view(2, "e2", None)), Plan::Reset { to: 5 });
        // After the reset, planning from 0 replays what is held.
        assert_eq!(
            plan(0, None, view(2, "e2", Some(1))),
            Plan::Replay { from: 0, gap: None }
        );
    }

    #[test]
    fn a_cursor_at_zero_never_resets() {
        assert_eq!(
            plan(0, Some("old"), view(4, "new", Some(1))),
            Plan::Replay { from: 0, gap: None }
        );
    }
}
