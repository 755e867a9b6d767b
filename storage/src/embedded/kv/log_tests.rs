//! The store's own log (`log.rs`): what it replays, what it refuses, and
//! what its checkpoints leave.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Db, Engine, KvError, Table};

const CACHE: u64 = crate::embedded::DEFAULT_CACHE_BYTES;

/// A database with the log on, checkpointed every `every` bytes, replayed.
fn open_logged(dir: &Path, engine: Engine, every: u64) -> Db {
    let db = Db::open_with_log(dir, engine, CACHE, Some(every)).expect("open");
    db.table("t").expect("table");
    db.replay_log().expect("replay");
    db
}

/// A database with the log off (a log found is replayed and removed).
fn open_plain(dir: &Path, engine: Engine) -> Db {
    let db = Db::open(dir, engine, CACHE).expect("open");
    db.table("t").expect("table");
    db.replay_log().expect("replay");
    db
}

fn value(t: &Table, key: &[u8]) -> Option<Vec<u8>> {
    t.get(key).expect("get").map(|v| v.to_vec())
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(super::log::DIR))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Rows written to the log whose engine writes never happened (a crash
/// between the log's sync and the engine's own) are applied at the next
/// open, on every engine, and removals after writes stay removed.
#[test]
fn a_logged_commit_the_engine_never_got_is_applied_at_open() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_logged(dir.path(), engine, super::CHECKPOINT_BYTES);
            let t = db.table("t").expect("table");
            let mut batch = db.batch();
            batch.insert(&t, b"applied".to_vec(), b"1".to_vec());
            batch.insert(&t, b"gone".to_vec(), b"1".to_vec());
            batch.durable().commit().expect("commit");
            let log = db.log().expect("log");
            let written = log
                .append(
                    [
                        ("t", &b"lost"[..], Some(&b"2"[..])),
                        ("t", &b"gone"[..], None),
                        ("t", &b"applied"[..], Some(&b"3"[..])),
                    ],
                    || Ok::<(), KvError>(()),
                )
                .expect("append");
            log.sync(&written).expect("sync");
            assert_eq!(value(&t, b"lost"), None, "{engine}: not applied yet");
            db.close();
        }
        let db = open_logged(dir.path(), engine, super::CHECKPOINT_BYTES);
        let t = db.table("t").expect("table");
        assert_eq!(value(&t, b"lost").as_deref(), Some(&b"2"[..]), "{engine}");
        assert_eq!(value(&t, b"gone"), None, "{engine}");
        assert_eq!(
            value(&t, b"applied").as_deref(),
            Some(&b"3"[..]),
            "{engine}"
        );
        db.close();
    }
}

/// Turned off, the log is applied one last time and removed.
#[test]
fn a_store_opened_with_the_log_off_applies_it_then_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open_logged(dir.path(), Engine::Fjall, super::CHECKPOINT_BYTES);
        let log = db.log().expect("log");
        let written = log
            .append(
                [("t", &b"k"[..], Some(&b"v"[..]))],
                || Ok::<(), KvError>(()),
            )
            .expect("append");
        log.sync(&written).expect("sync");
        db.close();
    }
    let db = open_plain(dir.path(), Engine::Fjall);
    let t = db.table("t").expect("table");
    assert_eq!(value(&t, b"k").as_deref(), Some(&b"v"[..]));
    assert!(!dir.path().join(super::log::DIR).exists(), "log removed");
    // Later writes go to the engine alone and are there after reopening.
    t.insert(b"later".to_vec(), b"w".to_vec()).expect("insert");
    db.sync().expect("sync");
    drop((t, db));
    let db = open_plain(dir.path(), Engine::Fjall);
    let t = db.table("t").expect("table");
    assert_eq!(value(&t, b"later").as_deref(), Some(&b"w"[..]));
}

/// A record cut short at the log's end (a write that never completed, so
/// never acknowledged) is dropped; what came before it is kept, and the
/// log goes on.
#[test]
fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open_logged(dir.path(), Engine::Redb, super::CHECKPOINT_BYTES);
        let t = db.table("t").expect("table");
        t.insert(b"before".to_vec(), b"1".to_vec()).expect("insert");
        db.sync().expect("sync");
        db.close();
    }
    let last = std::fs::read_dir(dir.path().join(super::log::DIR))
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a segment");
    let mut torn = std::fs::read(&last).expect("read");
    // A header promising 100 bytes, then 3 of them.
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&[7; 11]);
    std::fs::write(&last, torn).expect("tear");
    let db = open_logged(dir.path(), Engine::Redb, super::CHECKPOINT_BYTES);
    let t = db.table("t").expect("table");
    assert_eq!(value(&t, b"before").as_deref(), Some(&b"1"[..]));
    t.insert(b"after".to_vec(), b"2".to_vec()).expect("insert");
    db.sync().expect("sync");
    db.close();
    drop((t, db));
    let db = open_logged(dir.path(), Engine::Redb, super::CHECKPOINT_BYTES);
    let t = db.table("t").expect("table");
    assert_eq!(value(&t, b"after").as_deref(), Some(&b"2"[..]));
    db.close();
}

/// A damaged record with a later segment after it was synced before that
/// segment began: the store refuses to open rather than drop what follows.
#[test]
fn a_damaged_record_before_a_later_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open_logged(dir.path(), Engine::Fjall, super::CHECKPOINT_BYTES);
        db.close();
    }
    let log = dir.path().join(super::log::DIR);
    std::fs::write(log.join(format!("{:020}.log", 0)), [1u8; 40]).expect("write");
    std::fs::write(log.join(format!("{:020}.log", 40)), []).expect("write");
    std::fs::remove_file(log.join("checkpoint")).expect("no checkpoint");
    let db = Db::open_with_log(dir.path(), Engine::Fjall, CACHE, Some(1 << 20)).expect("open");
    db.table("t").expect("table");
    match db.replay_log() {
        Err(KvError::Log(super::log::LogError::Damaged { at, .. })) => assert_eq!(at, 0),
        Err(e) => panic!("another error: {e}"),
        Ok(()) => panic!("opened over a damaged log"),
    }
}

/// Checkpoints make the engine durable and remove the segments they
/// cover; every row is there after reopening.
#[test]
fn checkpoints_remove_the_segments_they_cover() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_logged(dir.path(), engine, 4 << 10);
            let t = db.table("t").expect("table");
            for i in 0u32..64 {
                let mut batch = db.batch();
                batch.insert(&t, i.to_be_bytes().to_vec(), vec![i as u8; 1000]);
                batch.durable().commit().expect("commit");
            }
            let log = db.log().expect("log");
            let deadline = Instant::now() + Duration::from_secs(20);
            while log.checkpointed() < 32 << 10 {
                assert!(Instant::now() < deadline, "{engine}: no checkpoint");
                std::thread::sleep(Duration::from_millis(5));
            }
            db.close();
            assert!(
                segments(dir.path()) <= 2,
                "{engine}: covered segments removed"
            );
        }
        let db = open_logged(dir.path(), engine, 4 << 10);
        let t = db.table("t").expect("table");
        for i in 0u32..64 {
            assert_eq!(
                value(&t, &i.to_be_bytes()),
                Some(vec![i as u8; 1000]),
                "{engine}: row {i}"
            );
        }
        db.close();
    }
}

/// A batch that goes through the log takes only its own engine's tables:
/// a commit with another's writes nothing, to the log or the engine.
#[test]
fn a_logged_batch_refuses_another_engines_table() {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let fjall = open_logged(a.path(), Engine::Fjall, super::CHECKPOINT_BYTES);
    let redb = open_logged(b.path(), Engine::Redb, super::CHECKPOINT_BYTES);
    let (ft, rt) = (
        fjall.table("t").expect("table"),
        redb.table("t").expect("table"),
    );
    let mut batch = fjall.batch();
    batch.insert(&ft, b"k".to_vec(), b"v".to_vec());
    batch.insert(&rt, b"k".to_vec(), b"v".to_vec());
    assert!(matches!(batch.durable().commit(), Err(KvError::Mismatch)));
    assert_eq!(value(&ft, b"k"), None);
    assert_eq!(value(&rt, b"k"), None);
    fjall.close();
    redb.close();
    drop((ft, rt, fjall, redb));
    let fjall = open_logged(a.path(), Engine::Fjall, super::CHECKPOINT_BYTES);
    assert_eq!(value(&fjall.table("t").expect("table"), b"k"), None);
    fjall.close();
}
