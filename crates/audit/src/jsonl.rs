//! Append-only JSON Lines audit log file.
//!
//! # File format
//!
//! UTF-8, one JSON object per line, each line ending in `\n`:
//!
//! - optionally, as the **first** line only, the retention anchor:
//!   `{"anchor":{"seq":N,"mac":"<64 hex>","removed":N}}` (present once a purge removed records);
//! - then one [`SealedRecord`] per line, oldest first:
//!   `{"seq":..,"at":"<RFC 3339>","actor":..,"action":..,"order_id":..,"customer_number":..,
//!   "outcome":..,"details":{..},"mac":"<64 hex>"}`.
//!
//! Appends add one line with a single `write` (and `fsync` unless
//! [`JsonlOptions::sync_each_append`] is off). Reopening resumes the chain from the last line.
//! A final line without its `\n` is what a crash during an append leaves; [`JsonlAuditLog::open`]
//! refuses such a file with [`Error::TornTail`] (line number and byte offset) unless
//! [`JsonlOptions::repair_torn_tail`] is set, which cuts the torn line off (its append never
//! returned `Ok`). Any other unparsable line is [`Error::Corrupt`].
//!
//! A purge rewrites the file to a temporary sibling (`<name>.purge-tmp`: anchor line, the
//! remaining lines byte for byte, the `retention_purge` record), syncs it and renames it over
//! the original, so a crash leaves either the old or the new file.
//!
//! Only one process may have the file open for appending; this is not checked. The open log
//! indexes line offsets, so changes made to the file by anything else are seen only after
//! reopening (which is how `provisioner audit verify` reads it).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chain::{Anchor, ChainHead, purge_record};
use crate::error::{Error, Result};
use crate::key::AuditKey;
use crate::log::{AuditLog, PurgeReport};
use crate::record::{Actor, NewAuditRecord, SealedRecord};

/// How to open a [`JsonlAuditLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonlOptions {
    /// `fsync` after every append (default `true`): an acknowledged record survives power loss.
    pub sync_each_append: bool,
    /// Cut off a torn final line instead of refusing to open (default `false`).
    pub repair_torn_tail: bool,
}

impl Default for JsonlOptions {
    fn default() -> Self {
        JsonlOptions {
            sync_each_append: true,
            repair_torn_tail: false,
        }
    }
}

/// A torn final line that [`JsonlOptions::repair_torn_tail`] cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset where it started (the file's length afterwards).
    pub offset: u64,
    /// Bytes removed.
    pub len: u64,
}

/// An [`AuditLog`] in an append-only JSON Lines file (see the module docs for the format).
///
/// File I/O runs on tokio's blocking pool; one mutex serialises appends, reads and purges.
#[derive(Clone)]
pub struct JsonlAuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    key: AuditKey,
    options: JsonlOptions,
    repaired: Option<TornTail>,
    state: Mutex<State>,
}

struct State {
    /// Opened for appending.
    file: File,
    /// Opened for reading.
    reader: File,
    anchor: Anchor,
    /// Whether line 1 is the anchor line.
    anchor_line: bool,
    head: ChainHead,
    /// One entry per record line, in file order.
    index: Vec<Entry>,
    /// Length of the file's complete lines.
    len: u64,
    /// Whether `index[i].seq == index[0].seq + i` for all i (always, unless tampered with).
    contiguous: bool,
    poisoned: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u64,
    at_micros: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorLine {
    anchor: Anchor,
}

fn corrupt(path: &Path, line: u64, e: &serde_json::Error) -> Error {
    // Category and column only: serde's messages can quote the offending value.
    Error::Corrupt {
        path: path.to_path_buf(),
        line,
        reason: format!("unparsable {:?} at column {}", e.classify(), e.column()),
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for JsonlAuditLog {
    /// Path, options, the key's fingerprint and the chain's extent; not the index.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("JsonlAuditLog");
        d.field("path", &inner.path)
            .field("key", &inner.key)
            .field("options", &inner.options);
        if let Ok(st) = inner.state.lock() {
            d.field("anchor_seq", &st.anchor.seq)
                .field("head_seq", &st.head.seq)
                .field("records", &st.index.len())
                .field("poisoned", &st.poisoned);
        }
        d.finish()
    }
}

impl JsonlAuditLog {
    /// Opens (creating if missing) the log at `path` with default [`JsonlOptions`].
    pub async fn open(path: impl AsRef<Path>, key: AuditKey) -> Result<Self> {
        Self::open_with(path, key, JsonlOptions::default()).await
    }

    /// Opens (creating if missing) the log at `path`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        key: AuditKey,
        options: JsonlOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (state, repaired) = blocking(move || load(&p, options.repair_torn_tail)).await?;
        Ok(JsonlAuditLog {
            inner: Arc::new(Inner {
                path,
                key,
                options,
                repaired,
                state: Mutex::new(state),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The torn final line cut off when opening, if any.
    pub fn repaired(&self) -> Option<TornTail> {
        self.inner.repaired
    }

    async fn with_state<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut State) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut st = inner.lock()?;
            f(&inner, &mut st)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Poisoned)?
}

fn load(path: &Path, repair: bool) -> Result<(State, Option<TornTail>)> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, "open", e))?;
    let mut reader = BufReader::new(&file);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line = 0u64;
    let mut anchor = Anchor::GENESIS;
    let mut anchor_line = false;
    let mut head = ChainHead::GENESIS;
    let mut index = Vec::new();
    let mut torn = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, "read", e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let Some(text) = buf.strip_suffix(b"\n") else {
            if !repair {
                return Err(Error::TornTail {
                    path: path.to_path_buf(),
                    line,
                    offset,
                });
            }
            torn = Some(TornTail {
                line,
                offset,
                len: to_u64(n),
            });
            break;
        };
        if line == 1
            && let Ok(a) = serde_json::from_slice::<AnchorLine>(text)
        {
            anchor = a.anchor;
            anchor_line = true;
            head = anchor.head();
        } else {
            let rec: SealedRecord =
                serde_json::from_slice(text).map_err(|e| corrupt(path, line, &e))?;
            index.push(Entry {
                seq: rec.record.seq,
                offset,
                at_micros: rec.record.at.timestamp_micros(),
            });
            head = ChainHead::after(&rec);
        }
        offset += to_u64(n);
    }
    drop(reader);
    if torn.is_some() {
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, "truncate torn line", e))?;
    }
    let reader = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    Ok((
        State {
            file,
            reader,
            anchor,
            anchor_line,
            head,
            contiguous: is_contiguous(&index),
            index,
            len: offset,
            poisoned: false,
        },
        torn,
    ))
}

impl Inner {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::Poisoned)
    }

    fn line_no(&self, st: &State, pos: usize) -> u64 {
        to_u64(pos) + 1 + u64::from(st.anchor_line)
    }

    fn append(&self, st: &mut State, record: NewAuditRecord) -> Result<SealedRecord> {
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let sealed = st.head.seal(&self.key, record)?;
        let line = encode_line(&sealed, &self.path)?;
        if let Err(e) = st.file.write_all(&line) {
            // Cut off whatever part of the line made it, so the file stays whole.
            if st.file.set_len(st.len).is_err() {
                st.poisoned = true;
            }
            return Err(Error::io(&self.path, "append", e));
        }
        if self.options.sync_each_append
            && let Err(e) = st.file.sync_data()
        {
            st.poisoned = true;
            return Err(Error::io(&self.path, "sync", e));
        }
        if st
            .index
            .last()
            .is_some_and(|e| e.seq.checked_add(1) != Some(sealed.record.seq))
        {
            st.contiguous = false;
        }
        st.index.push(Entry {
            seq: sealed.record.seq,
            offset: st.len,
            at_micros: sealed.record.at.timestamp_micros(),
        });
        st.len += to_u64(line.len());
        st.head = ChainHead::after(&sealed);
        Ok(sealed)
    }

    /// Reads the records at index positions `from..to`.
    fn read_positions(&self, st: &mut State, from: usize, to: usize) -> Result<Vec<SealedRecord>> {
        let (Some(start), true) = (st.index.get(from).map(|e| e.offset), from < to) else {
            return Ok(Vec::new());
        };
        let end = st.index.get(to).map_or(st.len, |e| e.offset);
        let len = usize::try_from(end - start).map_err(|_| Error::Corrupt {
            path: self.path.clone(),
            line: self.line_no(st, from),
            reason: "range too large to read".into(),
        })?;
        let mut buf = vec![0u8; len];
        st.reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| st.reader.read_exact(&mut buf))
            .map_err(|e| Error::io(&self.path, "read", e))?;
        let mut out = Vec::with_capacity(to - from);
        for (i, text) in buf.split(|b| *b == b'\n').take(to - from).enumerate() {
            let rec = serde_json::from_slice(text)
                .map_err(|e| corrupt(&self.path, self.line_no(st, from + i), &e))?;
            out.push(rec);
        }
        Ok(out)
    }

    fn purge(
        &self,
        st: &mut State,
        older_than: DateTime<Utc>,
        actor: Actor,
    ) -> Result<PurgeReport> {
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let cutoff = older_than.timestamp_micros();
        let n = st.index.iter().take_while(|e| e.at_micros < cutoff).count();
        if n == 0 {
            let anchor = st.anchor;
            let record = self.append(st, purge_record(actor, &anchor, 0, older_than)?)?;
            return Ok(PurgeReport {
                removed: 0,
                anchor,
                record,
            });
        }
        let last_removed = self
            .read_positions(st, n - 1, n)?
            .pop()
            .ok_or(Error::Poisoned)?;
        let anchor = Anchor::at(&last_removed);
        let removed = to_u64(n);
        let sealed = st.head.seal(
            &self.key,
            purge_record(actor, &anchor, removed, older_than)?,
        )?;

        let mut anchor_bytes =
            serde_json::to_vec(&AnchorLine { anchor }).map_err(|e| serialise(&self.path, e))?;
        anchor_bytes.push(b'\n');
        let purge_line = encode_line(&sealed, &self.path)?;
        let keep_from = st.index.get(n).map_or(st.len, |e| e.offset);

        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".purge-tmp");
        let tmp = PathBuf::from(tmp_name);
        let written = (|| -> std::io::Result<()> {
            let mut out = File::create(&tmp)?;
            out.write_all(&anchor_bytes)?;
            st.reader.seek(SeekFrom::Start(keep_from))?;
            let copied = std::io::copy(&mut (&st.reader).take(st.len - keep_from), &mut out)?;
            if copied != st.len - keep_from {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shorter than its index",
                ));
            }
            out.write_all(&purge_line)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&self.path, "rewrite for purge", e));
        }
        // Best effort: make the rename itself durable.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        let reopened = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|f| Ok((f, File::open(&self.path)?)));
        let (file, reader) = match reopened {
            Ok(f) => f,
            Err(e) => {
                st.poisoned = true;
                return Err(Error::io(&self.path, "reopen after purge", e));
            }
        };

        let base = to_u64(anchor_bytes.len());
        let mut index: Vec<Entry> = st.index[n..]
            .iter()
            .map(|e| Entry {
                offset: e.offset - keep_from + base,
                ..*e
            })
            .collect();
        let purge_offset = base + (st.len - keep_from);
        index.push(Entry {
            seq: sealed.record.seq,
            offset: purge_offset,
            at_micros: sealed.record.at.timestamp_micros(),
        });
        *st = State {
            file,
            reader,
            anchor,
            anchor_line: true,
            head: ChainHead::after(&sealed),
            contiguous: is_contiguous(&index),
            index,
            len: purge_offset + to_u64(purge_line.len()),
            poisoned: false,
        };
        Ok(PurgeReport {
            removed,
            anchor,
            record: sealed,
        })
    }
}

/// Position of the first entry with `seq >= from_seq`, in file order.
fn first_at_or_after(st: &State, from_seq: u64) -> Option<usize> {
    let first = st.index.first()?.seq;
    if st.contiguous {
        // Entry i has seq first + i.
        let pos = usize::try_from(from_seq.saturating_sub(first)).ok()?;
        return (pos < st.index.len()).then_some(pos);
    }
    // A tampered file: scan.
    st.index.iter().position(|e| e.seq >= from_seq)
}

fn is_contiguous(index: &[Entry]) -> bool {
    index
        .windows(2)
        .all(|w| w[0].seq.checked_add(1) == Some(w[1].seq))
}

fn serialise(path: &Path, e: serde_json::Error) -> Error {
    Error::io(path, "serialise", std::io::Error::other(e))
}

fn encode_line(rec: &SealedRecord, path: &Path) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(rec).map_err(|e| serialise(path, e))?;
    line.push(b'\n');
    Ok(line)
}

#[async_trait]
impl AuditLog for JsonlAuditLog {
    async fn append(&self, record: NewAuditRecord) -> Result<SealedRecord> {
        self.with_state(move |inner, st| inner.append(st, record))
            .await
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<SealedRecord>> {
        self.with_state(move |inner, st| {
            let Some(from) = first_at_or_after(st, from_seq) else {
                return Ok(Vec::new());
            };
            let to = from.saturating_add(limit).min(st.index.len());
            inner.read_positions(st, from, to)
        })
        .await
    }

    async fn head(&self) -> Result<ChainHead> {
        self.with_state(|_, st| Ok(st.head)).await
    }

    async fn anchor(&self) -> Result<Anchor> {
        self.with_state(|_, st| Ok(st.anchor)).await
    }

    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> Result<PurgeReport> {
        self.with_state(move |inner, st| inner.purge(st, older_than, actor))
            .await
    }
}
