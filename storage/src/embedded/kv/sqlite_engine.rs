//! The SQLite engine: one file in WAL mode, one `WITHOUT ROWID` table per
//! store table. Writes go through one connection; reads take a connection
//! from a small pool (WAL readers do not wait for the writer).

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, params};

use super::{KvError, Slice, Write};

/// The database file in the store's directory.
pub(super) const FILE: &str = "store.sqlite";

/// Rows a scan reads per query.
const PAGE: usize = 128;

/// Idle read connections kept.
const READERS: usize = 8;

struct Shared {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn open_connection(path: &Path) -> Result<Connection, KvError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A commit is fsynced only when asked (`synchronous=FULL` around a
    // durable commit); with one WAL written in order, that sync makes
    // every earlier commit durable too.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Runs `f` on a read connection from the pool.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, KvError>) -> Result<T, KvError> {
        let conn = match lock(&self.readers).pop() {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let out = f(&conn);
        let mut readers = lock(&self.readers);
        if readers.len() < READERS {
            readers.push(conn);
        }
        out
    }

    /// Runs `rows` in one transaction on the writer connection, fsynced
    /// before it returns when `durable`. Each table's statements are
    /// looked up once per commit.
    fn write(&self, durable: bool, rows: &[Write]) -> Result<(), KvError> {
        let mut conn = lock(&self.writer);
        if durable {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let out = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut statements = Vec::new();
                for (table, key, value) in rows {
                    let at = match statements.iter().position(|(t, _, _)| t == table) {
                        Some(at) => at,
                        None => {
                            statements.push((
                                *table,
                                tx.prepare_cached(&format!(
                                    "INSERT OR REPLACE INTO \"{table}\" (k, v) VALUES (?1, ?2)"
                                ))?,
                                tx.prepare_cached(&format!(
                                    "DELETE FROM \"{table}\" WHERE k = ?1"
                                ))?,
                            ));
                            statements.len() - 1
                        }
                    };
                    let (_, insert, delete) = &mut statements[at];
                    match value {
                        Some(v) => insert.execute(params![&**key, &**v])?,
                        None => delete.execute(params![&**key])?,
                    };
                }
            }
            tx.commit()
        })();
        if durable {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(out?)
    }
}

#[derive(Clone)]
pub(crate) struct Sqlite {
    shared: Arc<Shared>,
}

impl Sqlite {
    pub(super) fn open(dir: &Path) -> Result<Self, KvError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let writer = open_connection(&path)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS \"_sync\" (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        )?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub(super) fn table(&self, name: &'static str) -> Result<SqliteTable, KvError> {
        lock(&self.shared.writer).execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{name}\" (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
        ))?;
        Ok(SqliteTable {
            shared: Arc::clone(&self.shared),
            name,
            get: Arc::from(format!("SELECT v FROM \"{name}\" WHERE k = ?1")),
        })
    }

    /// `rows` in one transaction, fsynced before it returns when `durable`.
    pub(super) fn commit(&self, rows: &[Write], durable: bool) -> Result<(), KvError> {
        self.shared.write(durable, rows)
    }

    /// The store's tables (not the engine's own `_sync`).
    #[cfg(test)]
    pub(super) fn table_names(&self) -> Result<Vec<String>, KvError> {
        self.shared.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> '_sync'",
            )?;
            let names = stmt.query_map([], |row| row.get::<_, String>(0))?;
            Ok(names.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A durable commit of one counter row: it fsyncs the WAL, which holds
    /// every earlier commit (an empty transaction writes nothing to sync).
    pub(super) fn sync(&self) -> Result<(), KvError> {
        let mut conn = lock(&self.shared.writer);
        conn.pragma_update(None, "synchronous", "FULL")?;
        let out = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO \"_sync\" (k, n) VALUES (0, 1) ON CONFLICT (k) DO UPDATE SET n = n + 1",
                [],
            )?;
            tx.commit()
        })();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(out?)
    }
}

#[derive(Clone)]
pub(crate) struct SqliteTable {
    shared: Arc<Shared>,
    name: &'static str,
    /// The point read's statement, made once.
    get: Arc<str>,
}

impl SqliteTable {
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Slice>, KvError> {
        self.shared.read(|conn| {
            let mut stmt = conn.prepare_cached(&self.get)?;
            let mut rows = stmt.query(params![key])?;
            match rows.next()? {
                None => Ok(None),
                Some(row) => Ok(Some(Slice::from(
                    row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?,
                ))),
            }
        })
    }

    /// One row in a transaction of its own, not synced.
    pub(super) fn insert(&self, key: Slice, value: Slice) -> Result<(), KvError> {
        self.shared.write(false, &[(self.name, key, Some(value))])
    }

    pub(super) fn scan(&self, (lo, hi): (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> SqliteIter {
        SqliteIter {
            table: self.clone(),
            lo,
            hi,
            drained: false,
            front: VecDeque::new(),
            back: VecDeque::new(),
            failed: None,
        }
    }

    /// Up to [`PAGE`] rows between `lo` and `hi`, from the low end
    /// (`ascending`) or the high end.
    fn page(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        ascending: bool,
    ) -> Result<Vec<(Slice, Slice)>, KvError> {
        let mut conditions = Vec::new();
        let mut args: Vec<&[u8]> = Vec::new();
        for (bound, inclusive, exclusive) in [(lo, ">=", ">"), (hi, "<=", "<")] {
            match bound {
                Bound::Included(k) => {
                    args.push(k);
                    conditions.push(format!("k {inclusive} ?{}", args.len()));
                }
                Bound::Excluded(k) => {
                    args.push(k);
                    conditions.push(format!("k {exclusive} ?{}", args.len()));
                }
                Bound::Unbounded => {}
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT k, v FROM \"{}\" {filter} ORDER BY k {} LIMIT {PAGE}",
            self.name,
            if ascending { "ASC" } else { "DESC" }
        );
        self.shared.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
            let mut out = Vec::with_capacity(PAGE);
            while let Some(row) = rows.next()? {
                out.push((
                    Slice::from(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?),
                    Slice::from(row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?),
                ));
            }
            Ok(out)
        })
    }
}

/// A scan read a page at a time from either end. Rows fetched are taken
/// out of the range still to read, so the two ends never return a row
/// twice; once the range is drained, each end takes from what the other
/// end fetched. (Unlike fjall and redb, pages are read in separate
/// transactions: a scan sees writes committed while it runs.)
pub(crate) struct SqliteIter {
    table: SqliteTable,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    /// Nothing is left between `lo` and `hi`.
    drained: bool,
    /// Fetched from the low end, ascending.
    front: VecDeque<(Slice, Slice)>,
    /// Fetched from the high end, descending.
    back: VecDeque<(Slice, Slice)>,
    failed: Option<KvError>,
}

type Row = Result<(Slice, Slice), KvError>;

impl SqliteIter {
    fn fill(&mut self, ascending: bool) {
        if self.drained {
            return;
        }
        match self.table.page(&self.lo, &self.hi, ascending) {
            Err(e) => {
                self.drained = true;
                self.failed = Some(e);
            }
            Ok(rows) => {
                if rows.len() < PAGE {
                    self.drained = true;
                }
                if let Some((last, _)) = rows.last() {
                    if ascending {
                        self.lo = Bound::Excluded(last.to_vec());
                    } else {
                        self.hi = Bound::Excluded(last.to_vec());
                    }
                }
                if ascending {
                    self.front.extend(rows);
                } else {
                    self.back.extend(rows);
                }
            }
        }
    }

    /// The next row from the low end (`ascending`) or the high end.
    fn take(&mut self, ascending: bool) -> Option<Row> {
        let empty = if ascending {
            self.front.is_empty()
        } else {
            self.back.is_empty()
        };
        if empty {
            self.fill(ascending);
        }
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let (near, far) = if ascending {
            (&mut self.front, &mut self.back)
        } else {
            (&mut self.back, &mut self.front)
        };
        near.pop_front().or_else(|| far.pop_back()).map(Ok)
    }

    pub(super) fn next(&mut self) -> Option<Row> {
        self.take(true)
    }

    pub(super) fn next_back(&mut self) -> Option<Row> {
        self.take(false)
    }
}
