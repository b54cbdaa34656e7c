//! The batch store script (`shared/src/lua/store_dms.lua`) against a real
//! Redis, through the typed call of `redis_store::scripts::StoreDms`: a
//! batch of several users and both halves in one call, idempotent retries
//! across batches, halves completed by a later whole message, the `kept`
//! rule for inbox TTLs, and the per-user calls of Redis Cluster.

use redis::Value;
use redis_store::scripts::{DmsStored, InboxBounds, OpStored, StoreDms};
use redis_store::{Redis, RedisArgs};
use shared::keys;
use switchboard_tests::{RedisCluster, RedisServer};

const MAX_AGE_MS: u64 = 60_000;

fn bounds() -> InboxBounds {
    InboxBounds {
        max_len: 1000,
        max_age_ms: MAX_AGE_MS,
        cutoff_ms: 1,
        record_ttl_s: 60,
    }
}

/// Runs `dms` as one call and reads its reply.
async fn run<'s>(redis: &Redis, dms: &StoreDms<'s>) -> DmsStored<'s> {
    let reply = redis.invoke_all(&[dms.call()]).await;
    let [Ok(v)] = reply.as_slice() else {
        panic!("one reply: {reply:?}");
    };
    dms.parse(v).expect("a store_dms reply")
}

fn whole(to_seq: u64, from_seq: u64, fresh: bool) -> OpStored {
    OpStored {
        to_seq,
        to_fresh: fresh,
        from_seq: Some(from_seq),
        from_fresh: fresh,
    }
}

fn xlen(redis: &RedisServer, user: &str) -> u64 {
    redis
        .cmd(redis::cmd("XLEN").arg(keys::inbox(user)))
        .expect("XLEN")
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cmd(redis::cmd("PTTL").arg(key)).expect("PTTL")
}

#[tokio::test]
async fn one_call_stores_a_batch_of_several_users_both_halves_each() {
    let server = RedisServer::start();
    let redis = Redis::new(&RedisArgs::single(&server.url())).expect("handle");
    // bob is on server b (twice) and c, as `session_add.lua` writes it.
    server
        .cmd::<Value>(
            redis::cmd("SET")
                .arg(keys::user_servers("bob"))
                .arg("b:1 c:1 b:1"),
        )
        .expect("SET");
    let mut dms = StoreDms::new(bounds());
    dms.message("bob", "alice", "m1", "m1 alice bob 1 hi", true);
    dms.message("carol", "bob", "m2", "m2 bob carol 1 yo", true);
    dms.message("alice", "carol", "m3", "m3 carol alice 1 hey", false);
    dms.message("bob", "alice", "m4", "m4 alice bob 1 again", true);
    dms.message("alice", "alice", "m5", "m5 alice alice 1 self", true);
    let got = run(&redis, &dms).await;
    assert_eq!(
        got.ops[..4],
        [
            whole(1, 1, true),
            whole(1, 2, true),
            whole(2, 2, true),
            whole(3, 3, true)
        ]
    );
    assert_eq!(
        got.ops[4],
        OpStored {
            to_seq: 4,
            to_fresh: true,
            from_seq: None,
            from_fresh: false
        }
    );
    assert_eq!(
        got.servers,
        [
            ("bob", vec!["b".to_owned(), "c".to_owned()]),
            ("alice", vec![]),
            ("carol", vec![])
        ]
    );
    assert_eq!(
        [
            xlen(&server, "alice"),
            xlen(&server, "bob"),
            xlen(&server, "carol")
        ],
        [4, 3, 2]
    );
    // One idempotency record per message with a cid, under its recipient.
    let mut records = server.keys("sb:*:dm:*");
    records.sort();
    assert_eq!(
        records,
        [
            "sb:{u:alice}:dm:m5",
            "sb:{u:bob}:dm:m1",
            "sb:{u:bob}:dm:m4",
            "sb:{u:carol}:dm:m2"
        ]
    );
    let m1: String = server
        .cmd(redis::cmd("GET").arg("sb:{u:bob}:dm:m1"))
        .expect("GET");
    let ep = |u: &str| -> String {
        server
            .cmd(redis::cmd("GET").arg(keys::epoch(u)))
            .expect("epoch")
    };
    assert_eq!(m1, format!("{}-0 {}-0", ep("bob"), ep("alice")));
    // The record is the stream entry as given.
    let entry: Vec<(String, Vec<(String, String)>)> = server
        .cmd(
            redis::cmd("XRANGE")
                .arg(keys::inbox("alice"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1),
        )
        .expect("XRANGE");
    assert_eq!(
        entry[0].1,
        [("m".to_owned(), "m1 alice bob 1 hi".to_owned())]
    );
}

#[tokio::test]
async fn a_retry_in_a_later_batch_gets_the_first_answer_and_stores_nothing() {
    let server = RedisServer::start();
    let redis = Redis::new(&RedisArgs::single(&server.url())).expect("handle");
    let mut first = StoreDms::new(bounds());
    first.message("bob", "alice", "m1", "m1 alice bob 1 hi", true);
    first.message("alice", "bob", "m2", "m2 bob alice 1 yo", true);
    let got = run(&redis, &first).await;
    assert_eq!(got.ops, [whole(1, 1, true), whole(2, 2, true)]);
    // A later batch: a retry of m1, a new message, a retry of m2, and m1
    // twice more in the same call.
    let mut later = StoreDms::new(bounds());
    later.message("bob", "alice", "m1", "m1 alice bob 1 hi", true);
    later.message("bob", "alice", "m3", "m3 alice bob 1 new", true);
    later.message("alice", "bob", "m2", "m2 bob alice 1 yo", true);
    later.message("bob", "alice", "m1", "m1 alice bob 1 hi", true);
    let got = run(&redis, &later).await;
    assert_eq!(
        got.ops,
        [
            whole(1, 1, false),
            whole(3, 3, true),
            whole(2, 2, false),
            whole(1, 1, false)
        ]
    );
    // Without a cid nothing is remembered: the same id is a new message.
    let mut plain = StoreDms::new(bounds());
    plain.message("bob", "alice", "m1", "m1 alice bob 1 hi", false);
    assert_eq!(run(&redis, &plain).await.ops, [whole(4, 4, true)]);
    assert_eq!([xlen(&server, "alice"), xlen(&server, "bob")], [4, 4]);
}

#[tokio::test]
async fn a_whole_message_retry_completes_a_half_stored_alone() {
    let server = RedisServer::start();
    let redis = Redis::new(&RedisArgs::single(&server.url())).expect("handle");
    // Only the recipient's half, as a crash between the halves leaves it.
    let mut half = StoreDms::new(bounds());
    half.half("bob", "m1", "m1 alice bob 1 hi", true);
    let got = run(&redis, &half).await;
    assert_eq!((got.ops[0].to_seq, got.ops[0].to_fresh), (1, true));
    assert_eq!(xlen(&server, "alice"), 0);
    // The retry stores the sender's half only; a second retry nothing.
    for fresh in [true, false] {
        let mut retry = StoreDms::new(bounds());
        retry.message("bob", "alice", "m1", "m1 alice bob 1 hi", true);
        let got = run(&redis, &retry).await;
        assert_eq!(
            got.ops,
            [OpStored {
                to_seq: 1,
                to_fresh: false,
                from_seq: Some(1),
                from_fresh: fresh
            }]
        );
        assert_eq!([xlen(&server, "alice"), xlen(&server, "bob")], [1, 1]);
    }
}

#[tokio::test]
async fn inbox_ttls_are_refreshed_only_when_the_kept_key_is_gone() {
    let server = RedisServer::start();
    let redis = Redis::new(&RedisArgs::single(&server.url())).expect("handle");
    let store = |n: u32| {
        let mut dms = StoreDms::new(bounds());
        let id = format!("m{n}");
        dms.half("bob", &id, "x alice bob 1 hi", false);
        let redis = redis.clone();
        async move {
            run(&redis, &dms).await;
        }
    };
    store(1).await;
    let (inbox, ep, kept) = (keys::inbox("bob"), keys::epoch("bob"), keys::kept("bob"));
    // The inbox and its epoch live the max age and a tenth; `kept` a tenth.
    let full = (MAX_AGE_MS + MAX_AGE_MS / 10) as i64;
    for key in [&inbox, &ep] {
        let t = pttl(&server, key);
        assert!(t > full - 5_000 && t <= full + 1, "{key}: {t}");
    }
    let t = pttl(&server, &kept);
    assert!(t > 1_000 && t <= (MAX_AGE_MS / 10 + 1) as i64, "kept: {t}");
    // While `kept` is there, storing leaves the TTLs alone.
    for key in [&inbox, &ep] {
        server
            .cmd::<i64>(redis::cmd("PEXPIRE").arg(key).arg(30_000))
            .expect("PEXPIRE");
    }
    store(2).await;
    for key in [&inbox, &ep] {
        let t = pttl(&server, key);
        assert!(t <= 30_000, "{key} was refreshed: {t}");
    }
    // Once it is gone, the next message refreshes both and sets it again.
    server
        .cmd::<i64>(redis::cmd("DEL").arg(&kept))
        .expect("DEL");
    store(3).await;
    for key in [&inbox, &ep] {
        let t = pttl(&server, key);
        assert!(t > full - 5_000, "{key} not refreshed: {t}");
    }
    assert!(pttl(&server, &kept) > 0);
    assert_eq!(xlen(&server, "bob"), 3);
}

#[tokio::test]
async fn in_a_cluster_each_user_takes_its_halves_in_one_call() {
    let cluster = RedisCluster::start();
    let redis = Redis::new(&cluster.args()).expect("handle");
    // bob's call holds his half of m1 and of m2; alice's and carol's theirs.
    let batch = |retry: bool| {
        let mut bob = StoreDms::new(bounds());
        bob.half("bob", "m1", "m1 alice bob 1 hi", true);
        bob.half("bob", "m2", "m2 bob carol 1 yo", true);
        let mut alice = StoreDms::new(bounds());
        alice.half("alice", "m1", "m1 alice bob 1 hi", true);
        let mut carol = StoreDms::new(bounds());
        if !retry {
            carol.half("carol", "m2", "m2 bob carol 1 yo", true);
        }
        carol.half("carol", "m3", "m3 x carol 1 z", false);
        [bob, alice, carol]
    };
    for (retry, carols) in [(false, [1, 2]), (true, [3, 0])] {
        let calls = batch(retry);
        let replies = redis
            .invoke_all(&calls.iter().map(StoreDms::call).collect::<Vec<_>>())
            .await;
        let got: Vec<Vec<(u64, bool)>> = calls
            .iter()
            .zip(&replies)
            .map(|(c, r)| {
                let r = r.as_ref().expect("no CROSSSLOT: one slot per call");
                let s = c.parse(r).expect("a store_dms reply");
                s.ops.iter().map(|o| (o.to_seq, o.to_fresh)).collect()
            })
            .collect();
        assert_eq!(got[0], [(1, !retry), (2, !retry)]);
        assert_eq!(got[1], [(1, !retry)]);
        if retry {
            assert_eq!(got[2], [(carols[0], true)]);
        } else {
            assert_eq!(got[2], [(carols[0], true), (carols[1], true)]);
        }
    }
}
