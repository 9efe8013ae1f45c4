//! Anchoring the audit chains' signed heads outside the database.
//!
//! At every maintenance pass each chain's signed head is appended, as one JSON line, to a
//! file (by default `<data_dir>/audit-heads.jsonl`), opened in append mode and synced. The
//! file is what shows a rollback of the database that leaves it consistent (entries cut
//! off and an old head row restored): `datastack audit verify --heads FILE` checks the
//! store against every line. The node also remembers the last head it anchored per chain
//! (seeded from the file at start) and, when the store no longer holds that head, records
//! the break in the chain, so it stays reported until an operator acknowledges it.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use datastack_core::audit::{ChainBreak, now_micros};
use datastack_core::audit_breaks::AnchoredHead;
use datastack_core::id::WorkspaceId;
use datastack_store::{HeadCheck, Store};

/// The heads anchored by this node, and where to write the next ones.
pub struct Anchor {
    path: Option<PathBuf>,
    known: HashMap<String, AnchoredHead>,
}

impl Anchor {
    /// Anchors into `path` (`None`: nowhere, and nothing remembered), remembering the last
    /// head the file holds for each chain.
    pub async fn open(path: Option<PathBuf>) -> Self {
        let mut known = HashMap::new();
        if let Some(p) = path.clone() {
            let read = tokio::task::spawn_blocking(move || last_heads(&p)).await;
            match read {
                Ok(Ok(heads)) => known = heads,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the audit heads file cannot be read; heads anchored before this start are not compared")
                }
                Err(e) => tracing::warn!(error = %e, "reading the audit heads file failed"),
            }
        }
        Self { path, known }
    }

    /// One pass: compares every chain's head with the last one anchored (recording a break
    /// when the store no longer holds it), then appends every head that moved since to the
    /// file.
    pub async fn pass(&mut self, store: &Store) -> Result<(), datastack_store::Error> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        for (ws, head) in store.signed_heads().await? {
            let Some(known) = self.known.get(ws.as_str()) else {
                continue;
            };
            if head.seq == known.seq && head.hash == known.hash {
                continue;
            }
            // One chain's failure does not keep the others' heads from being anchored.
            if let Err(e) = compare(store, &ws, head.seq, known).await {
                tracing::warn!(workspace = %ws, error = %e, "comparing the audit chain with its anchored head failed");
            }
        }
        let time = now_micros();
        // Only heads that moved since this node last anchored them: the file grows with
        // the log's activity, not with the number of passes.
        let heads: Vec<AnchoredHead> = store
            .signed_heads()
            .await?
            .into_iter()
            .filter(|(ws, h)| {
                self.known
                    .get(ws.as_str())
                    .is_none_or(|k| k.seq != h.seq || k.hash != h.hash)
            })
            .map(|(ws, h)| AnchoredHead {
                workspace_id: ws.to_string(),
                seq: h.seq,
                hash: h.hash,
                signature: h.signature,
                time,
            })
            .collect();
        if heads.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for h in &heads {
            text.push_str(&h.to_line());
            text.push('\n');
        }
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || append_synced(&target, &text)).await;
        match written {
            Ok(Ok(())) => {
                for h in heads {
                    self.known.insert(h.workspace_id.clone(), h);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(file = %path.display(), error = %e, "cannot append the audit chain heads to the heads file");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "appending the audit chain heads failed");
                Ok(())
            }
        }
    }
}

/// Compares `ws`'s chain, whose head is now at `head_seq`, with the head `known` this node
/// anchored, and records a `head_rolled_back` break when the store no longer holds it.
async fn compare(
    store: &Store,
    ws: &WorkspaceId,
    head_seq: i64,
    known: &AnchoredHead,
) -> Result<(), datastack_store::Error> {
    // A line of the file someone edited proves nothing; the verifier reports it.
    if !store.is_signed_head(known)? {
        return Ok(());
    }
    let check = store.check_head(ws, known.seq, &known.hash).await?;
    if matches!(check, HeadCheck::Matches | HeadCheck::Purged) {
        return Ok(());
    }
    let report = store.verify_audit_chain(ws).await?;
    // A recorded break accounts for it only if it knew of a head at least as new (an
    // append that found this very head gone records it as lost); a break that knew of an
    // older head, or of none, says less was lost than was, and does not. A chain broken otherwise is reported broken already, and a
    // marker at every pass would add nothing.
    let explained = report.breaks.iter().any(|b| b.accounts_for(known.seq))
        || report
            .broken
            .as_ref()
            .is_some_and(|b| !matches!(b, ChainBreak::UnacknowledgedBreak { .. }));
    if !explained {
        tracing::error!(workspace = %ws, anchored_seq = known.seq, head_seq, ?check, "the audit chain no longer holds the head anchored outside the database; the break is recorded in the chain");
        store
            .record_chain_break(ws, "head_rolled_back", head_seq, Some(known.seq))
            .await?;
    }
    Ok(())
}

/// Appends `text` and syncs it to disk before returning.
fn append_synced(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

/// The last line of the file for each chain (lines that do not parse are skipped: the
/// verifier reports them).
fn last_heads(path: &std::path::Path) -> std::io::Result<HashMap<String, AnchoredHead>> {
    let file = std::fs::File::open(path)?;
    let mut heads = HashMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if let Ok(h) = AnchoredHead::parse_line(&line) {
            heads.insert(h.workspace_id.clone(), h);
        }
    }
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditHeadsFile;

    #[test]
    fn the_setting_names_the_file_or_none() {
        let dir = std::path::Path::new("/var/lib/datastack");
        assert_eq!(
            AuditHeadsFile::Default.path(dir),
            Some(dir.join("audit-heads.jsonl"))
        );
        assert_eq!(
            AuditHeadsFile::At("/x/h.jsonl".into()).path(dir),
            Some(PathBuf::from("/x/h.jsonl"))
        );
        assert_eq!(AuditHeadsFile::Off.path(dir), None);
    }

    #[test]
    fn appends_go_to_the_end_and_the_last_head_of_each_chain_is_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("heads.jsonl");
        let (a, b) = (WorkspaceId::generate(), WorkspaceId::generate());
        let line = |ws: &WorkspaceId, seq: i64| {
            let mut l = AnchoredHead {
                workspace_id: ws.to_string(),
                seq,
                hash: format!("{seq:064}"),
                signature: String::new(),
                time: now_micros(),
            }
            .to_line();
            l.push('\n');
            l
        };
        append_synced(&path, &(line(&a, 1) + &line(&b, 1))).expect("append");
        append_synced(&path, &(line(&a, 5) + "not json\n")).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 4);
        let heads = last_heads(&path).expect("read back");
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[a.as_str()].seq, 5);
        assert_eq!(heads[b.as_str()].seq, 1);
    }
}
