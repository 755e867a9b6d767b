//! The embedded store on a disk that fills up, for real: appends 16 KiB
//! messages into `DIR` (put it on a small file system, e.g. a tmpfs mounted
//! with `size=64m`) until the store refuses, then reopens the store and
//! writes once more, then frees the ballast it wrote and writes again.
//!
//! `cargo run -p qim-storage --example disk_full -- DIR MIN_FREE_BYTES`
//!
//! With `MIN_FREE_BYTES` 0 (no floor) the failed write poisons fjall:
//! `Failed`, every later write fails until a reopen, and after a reopen on
//! the still-full disk the writes fail again soon (the gateway's restart
//! loop). With a floor (e.g. 16777216) the writes are refused `Full` before
//! they reach fjall, and they succeed again once the ballast is gone,
//! without a reopen.

use std::path::PathBuf;

use qim_proto::v1;
use qim_storage::embedded::EmbeddedStore;
use qim_storage::{MessageStore, NewMessage, StoreError};

fn message(i: usize) -> NewMessage {
    NewMessage {
        inbox: format!("user{}", i % 50),
        sender: "filler".into(),
        sender_device: "d".into(),
        client_msg_id: format!("m{i}"),
        to: v1::Peer::default(),
        kind: "blob".into(),
        // Random, so compression does not shrink what it takes on disk.
        body: (0..16 * 1024)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>()
            .into(),
        server_time_ms: 0,
    }
}

async fn fill(store: &EmbeddedStore, from: usize) -> (usize, StoreError) {
    let mut i = from;
    loop {
        match store.append(vec![message(i)]).await {
            Ok(_) => i += 1,
            Err(e) => return (i, e),
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(min_free)) = (args.next(), args.next()) else {
        eprintln!("usage: disk_full DIR MIN_FREE_BYTES");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let min_free: u64 = min_free.parse().unwrap_or_else(|_| {
        eprintln!("MIN_FREE_BYTES is not a number");
        std::process::exit(2);
    });
    let store_dir = dir.join("store");
    let ballast = dir.join("ballast");
    let store = EmbeddedStore::open(&store_dir).unwrap_or_else(|e| {
        eprintln!("open: {e}");
        std::process::exit(1);
    });
    store.disk().set_min_free_bytes(min_free);
    // Most of the space goes to a ballast file, the rest to messages.
    let free = store.disk().refresh();
    let ballast_bytes = free.saturating_sub(min_free + 24 * 1024 * 1024);
    if let Err(e) = std::fs::write(&ballast, vec![0u8; ballast_bytes as usize]) {
        eprintln!("ballast: {e}");
    }
    let (written, error) = fill(&store, 0).await;
    println!(
        "filled: {written} messages, then {error:?} (retryable {}, fatal {}), {} bytes free",
        error.is_retryable(),
        error.is_fatal(),
        store.disk().refresh()
    );
    let read = store.read_inbox("user0", 0, 5).await.map(|m| m.len());
    println!("a read while full: {read:?}");
    let again = store.append(vec![message(written)]).await.err();
    println!("the next write: {again:?}");
    drop(store);
    match EmbeddedStore::open(&store_dir) {
        Ok(store) => {
            store.disk().set_min_free_bytes(min_free);
            let (more, error) = fill(&store, written).await;
            println!(
                "after a reopen on the full disk: {} more messages, then {error:?} (fatal {})",
                more - written,
                error.is_fatal()
            );
            let _ = std::fs::remove_file(&ballast);
            let freed = store.append(vec![message(written + 1)]).await;
            println!(
                "after freeing {ballast_bytes} bytes, without a reopen: {:?}",
                freed.map(|a| a.len())
            );
        }
        Err(e) => println!("reopen on the full disk failed: {e}"),
    }
}
