//! A tiny chat against a running local cluster (`scripts/cluster up`, dev
//! mode): `cargo run -p switchboard-client --example chat -- alice bob`
//! logs in as `alice`, prints what arrives, and sends each line typed on
//! stdin to `bob`. `SB_SERVERS` (comma-separated endpoints) overrides the
//! servers, `SB_TOKEN` gives a token.

use std::io::BufRead;

use switchboard_client::{Client, Config, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(me), Some(peer)) = (args.next(), args.next()) else {
        eprintln!("usage: chat <me> <peer>");
        std::process::exit(2);
    };
    let servers = std::env::var("SB_SERVERS")
        .unwrap_or_else(|_| "ws://127.0.0.1:9001/ws,ws://127.0.0.1:9002/ws".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = Config::new(me, servers);
    config.token = std::env::var("SB_TOKEN").ok();
    let (client, mut events) = Client::connect(config).await?;

    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Message { msg, .. } => println!("{}: {}", msg.from, msg.text),
                Event::Room(m) => println!("[{}] {}: {}", m.room, m.from, m.text),
                other => eprintln!("-- {other:?}"),
            }
        }
    });

    // Stdin is blocking: read it on a thread, hand lines over a channel.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        match client.send(&peer, &line).await {
            Ok(sent) => eprintln!("-- stored as seq {} for {peer}", sent.seq),
            Err(e) => eprintln!("-- not sent: {e}"),
        }
    }
    client.close().await;
    Ok(())
}
