//! Each engine answers the table operations the same way.

use std::ops::Bound;

use super::{Db, Engine, KvError, Table, TableKind};

fn key(i: u32) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn keys(iter: impl Iterator<Item = super::Entry>) -> Vec<Vec<u8>> {
    iter.map(|e| e.key().expect("read").to_vec()).collect()
}

fn filled(db: &Db, rows: u32) -> Table {
    let t = db.table("t").expect("table");
    let mut batch = db.batch();
    for i in 0..rows {
        batch.insert(&t, key(i), i.to_be_bytes().to_vec());
    }
    // Rows around the prefix that a prefix scan must not return.
    batch.insert(&t, b"p".to_vec(), b"below".to_vec());
    batch.insert(&t, b"p0".to_vec(), b"above".to_vec());
    batch.durable().commit().expect("commit");
    t
}

#[test]
fn point_reads_and_writes() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), engine, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
        let t = db.table("t").expect("table");
        assert!(t.is_empty().expect("empty"), "{engine}");
        t.insert(b"a".to_vec(), b"1".to_vec()).expect("insert");
        t.insert(b"a".to_vec(), b"2".to_vec()).expect("overwrite");
        assert_eq!(
            t.get(b"a").expect("get").as_deref(),
            Some(&b"2"[..]),
            "{engine}"
        );
        assert!(t.contains_key(b"a").expect("contains"), "{engine}");
        assert!(!t.is_empty().expect("empty"), "{engine}");
        let mut batch = db.batch();
        batch.remove(&t, b"a".to_vec());
        batch.commit().expect("remove");
        assert_eq!(t.get(b"a").expect("get"), None, "{engine}");
        assert!(t.is_empty().expect("empty"), "{engine}");
    }
}

/// Scans cross SQLite's pages (128 rows) from either end and from both
/// ends at once without skipping or repeating a row.
#[test]
fn scans_return_each_row_once_in_order_from_either_end() {
    let n = 300;
    let all: Vec<Vec<u8>> = (0..n).map(key).collect();
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), engine, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
        let t = filled(&db, n);
        assert_eq!(keys(t.prefix(b"p/")), all, "{engine} forward");
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(keys(t.prefix(b"p/").rev()), reversed, "{engine} backward");
        // Alternating ends meet in the middle.
        let mut scan = t.prefix(b"p/");
        let mut met = Vec::new();
        while let Some(e) = scan.next() {
            met.push(e.key().expect("read").to_vec());
            if let Some(e) = scan.next_back() {
                met.push(e.key().expect("read").to_vec());
            }
        }
        met.sort();
        assert_eq!(met, all, "{engine} both ends");
        // Range bounds, inclusive and exclusive.
        assert_eq!(
            keys(t.range(key(10)..key(13))),
            all[10..13].to_vec(),
            "{engine}"
        );
        assert_eq!(
            keys(t.range(key(10)..=key(13))),
            all[10..=13].to_vec(),
            "{engine}"
        );
        assert_eq!(
            keys(t.range::<Vec<u8>, _>((Bound::Excluded(key(297)), Bound::Unbounded))),
            vec![key(298), key(299), b"p0".to_vec()],
            "{engine}"
        );
        assert_eq!(
            keys(t.range(..key(1)).take(5)),
            vec![b"p".to_vec(), key(0)],
            "{engine}"
        );
        assert_eq!(
            t.prefix(b"p/")
                .next_back()
                .map(|e| e.key().expect("read").to_vec()),
            Some(key(n - 1)),
            "{engine} last"
        );
        assert_eq!(
            t.first_key_value().map(|e| e.key().expect("read").to_vec()),
            Some(b"p".to_vec()),
            "{engine} first"
        );
    }
}

/// A batch is written whole, and once committed durably it is there after
/// the database is opened again; so is a write made before a sync.
#[test]
fn batches_and_syncs_survive_reopening() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db =
                Db::open(dir.path(), engine, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
            let t = filled(&db, 10);
            let mut batch = db.batch();
            batch.remove(&t, key(0));
            batch.insert(&t, key(100), b"x".to_vec());
            batch.commit().expect("commit");
            t.insert(b"single".to_vec(), b"y".to_vec()).expect("insert");
            db.sync().expect("sync");
        }
        let db =
            Db::open(dir.path(), engine, crate::embedded::DEFAULT_CACHE_BYTES).expect("reopen");
        let t = db.table("t").expect("table");
        assert_eq!(t.get(key(0)).expect("get"), None, "{engine}");
        assert_eq!(
            t.get(key(100)).expect("get").as_deref(),
            Some(&b"x"[..]),
            "{engine}"
        );
        assert_eq!(
            t.get(b"single").expect("get").as_deref(),
            Some(&b"y"[..]),
            "{engine}"
        );
        assert_eq!(keys(t.prefix(b"p/")).len(), 10, "{engine}");
    }
}

/// A directory keeps the engine that wrote it: opening it with another one
/// is refused, not answered from an empty second store.
#[test]
fn another_engines_directory_is_refused() {
    for written in Engine::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db =
                Db::open(dir.path(), written, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
            db.table("t")
                .expect("table")
                .insert(b"a".to_vec(), b"1".to_vec())
                .expect("insert");
            db.sync().expect("sync");
        }
        assert_eq!(Engine::found_in(dir.path()), Some(written));
        for asked in Engine::ALL.into_iter().filter(|e| *e != written) {
            match Db::open(dir.path(), asked, crate::embedded::DEFAULT_CACHE_BYTES) {
                Err(KvError::OtherEngine { found, .. }) => assert_eq!(found, written),
                Err(e) => panic!("{asked} on {written}'s directory: {e}"),
                Ok(_) => panic!("{asked} opened {written}'s directory"),
            }
        }
    }
}

/// A write of one engine's table into another's batch fails the commit
/// and writes nothing of the batch.
#[test]
fn a_batch_refuses_another_engines_table() {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let fjall = Db::open(
        a.path(),
        Engine::Fjall,
        crate::embedded::DEFAULT_CACHE_BYTES,
    )
    .expect("open");
    let redb =
        Db::open(b.path(), Engine::Redb, crate::embedded::DEFAULT_CACHE_BYTES).expect("open");
    let (ft, rt) = (fjall.table("t").expect("t"), redb.table("t").expect("t"));
    let mut batch = fjall.batch();
    batch.insert(&ft, b"a".to_vec(), b"1".to_vec());
    batch.insert(&rt, b"b".to_vec(), b"2".to_vec());
    assert!(matches!(batch.commit(), Err(KvError::Mismatch)));
    assert_eq!(ft.get(b"a").expect("get"), None);
    assert_eq!(rt.get(b"b").expect("get"), None);
}

/// A table of rewritten rows flushes its memtable after a few MiB of
/// rewrites, and keeps only the newest value of each row; a table of
/// growing rows holds the same writes in memory.
#[test]
fn rewritten_rows_are_flushed_from_a_small_memtable() {
    use super::Rows;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(
        dir.path(),
        Engine::Fjall,
        crate::embedded::DEFAULT_CACHE_BYTES,
    )
    .expect("open");
    let growing = db.table_of("growing", Rows::Growing).expect("table");
    let rewritten = db.table_of("rewritten", Rows::Rewritten).expect("table");
    let value = vec![7u8; 1024];
    // 8 MiB of rewrites of 16 rows into each table.
    for round in 0u32..512 {
        let mut batch = db.batch();
        for row in 0u32..16 {
            let mut v = value.clone();
            v[..4].copy_from_slice(&round.to_be_bytes());
            batch.insert(&growing, key(row), v.clone());
            batch.insert(&rewritten, key(row), v);
        }
        batch.commit().expect("commit");
    }
    let (TableKind::Fjall(g), TableKind::Fjall(r)) = (&growing.kind, &rewritten.kind) else {
        panic!("fjall tables");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while r.table_count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rewritten table's memtable was not flushed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        g.table_count(),
        0,
        "the growing table's memtable was flushed"
    );
    assert_eq!(g.sealed_memtable_count(), 0);
    for row in 0u32..16 {
        for t in [&growing, &rewritten] {
            let got = t.get(key(row)).expect("get").expect("row");
            assert_eq!(got[..4], 511u32.to_be_bytes(), "row {row}");
        }
    }
}
