//! Workspaces, and the first start that creates one with its admin.

use chrono::Utc;
use datastack_core::id::{TokenId, WorkspaceId};
use datastack_core::model::{Principal, Status, Token, Workspace, WorkspaceSettings};

use crate::audit::{Trail, write_trail};
use crate::rows::WorkspaceRow;
use crate::tokens::{INSERT_TOKEN, bind_token, caller_valid};
use crate::{Error, Page, PageRequest, Result, Store, announce, with_pool};

/// A change to a workspace; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WorkspacePatch {
    /// A new name.
    pub name: Option<String>,
    /// Settings to change: `None` keeps a setting, `Some(None)` clears it, `Some(Some(v))`
    /// sets it.
    pub max_token_lifetime_days: Option<Option<u32>>,
    /// See `max_token_lifetime_days`.
    pub audit_retention_days: Option<Option<u32>>,
    /// See `max_token_lifetime_days`.
    pub auto_revoke_unused_days: Option<Option<u32>>,
    /// Suspend (or resume) the enforcement of IP access lists.
    pub ip_access_lists_suspended: Option<bool>,
    /// Opt in to (or out of) data retention by upstream services.
    pub data_retention_consent: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker<'a> {
    /// This is the first start: claim the bootstrap marker or do nothing.
    Claim,
    /// An ordinary creation by this credential, which must still be valid.
    Creator(&'a TokenId),
}

/// Which workspaces a list returns, within the viewer's subtree.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceFilter {
    /// Only the direct children of this workspace.
    pub parent: Option<WorkspaceId>,
    /// Only workspaces with this status (their own, not inherited from an ancestor).
    pub status: Option<Status>,
}

/// The most parent links a recursive walk follows. Deeper than any depth the server's
/// `workspace_max_depth` allows, it only guards against a corrupt parent cycle.
pub const MAX_CHAIN: i64 = 64;

/// The ancestors of `$1` (id, status), nearest first, at most `$2` of them.
const ANCESTORS: &str = "WITH RECURSIVE up(id, parent_id, status, depth) AS ( \
       SELECT id, parent_id, status, 0 FROM workspaces WHERE id = $1 \
       UNION ALL \
       SELECT w.id, w.parent_id, w.status, up.depth + 1 FROM workspaces w JOIN up ON w.id = up.parent_id \
       WHERE up.depth < $2) \
     SELECT id, status FROM up WHERE depth > 0 ORDER BY depth";

/// The start of both workspace INSERTs: eleven columns, bound in this order.
macro_rules! insert_workspace_columns {
    () => {
        "INSERT INTO workspaces (id, name, parent_id, max_token_lifetime_days, created_at, updated_at, \
         status, audit_retention_days, auto_revoke_unused_days, ip_access_lists_suspended, \
         data_retention_consent) "
    };
}

/// Inserts one workspace.
const INSERT_WORKSPACE: &str = concat!(
    insert_workspace_columns!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
);

/// Inserts one workspace only if the creating credential (`$12`) is still valid.
const INSERT_WORKSPACE_IF_CALLER_VALID: &str = concat!(
    insert_workspace_columns!(),
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 WHERE ",
    caller_valid!("$12")
);

const WORKSPACE_COLUMNS: &str = "id, name, parent_id, max_token_lifetime_days, audit_retention_days, auto_revoke_unused_days, ip_access_lists_suspended, data_retention_consent, \
     status, created_at, updated_at";

impl Store {
    /// On a store that has never been bootstrapped, creates the first workspace, its admin
    /// and the admin's token, and returns `true`. On any other store it changes nothing and
    /// returns `false`, however many nodes try at once.
    pub async fn bootstrap(
        &self,
        ws: &Workspace,
        admin: &Principal,
        token: &Token,
        trail: &Trail,
    ) -> Result<bool> {
        self.insert_workspace_with_admin(ws, admin, token, trail, Marker::Claim)
            .await
    }

    /// Creates a workspace with its first admin and that admin's token, in one transaction,
    /// only if the credential `creator` is still valid when it runs (unrevoked, its owner,
    /// the owner's workspace and every ancestor active; `CallerRevoked` otherwise): a
    /// request authenticated just before a suspension above it cannot grow the tree after.
    pub async fn create_workspace_with_admin(
        &self,
        ws: &Workspace,
        admin: &Principal,
        token: &Token,
        creator: &TokenId,
        trail: &Trail,
    ) -> Result<()> {
        self.insert_workspace_with_admin(ws, admin, token, trail, Marker::Creator(creator))
            .await
            .map(|_| ())
    }

    async fn insert_workspace_with_admin(
        &self,
        ws: &Workspace,
        admin: &Principal,
        token: &Token,
        trail: &Trail,
        marker: Marker<'_>,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if marker == Marker::Claim {
                let claimed = sqlx::query(
                    "INSERT INTO bootstrap_marker (id, created_at) VALUES (1, $1) ON CONFLICT DO NOTHING",
                )
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if claimed == 0 {
                    return Ok(false);
                }
            }
            // The creator's check is part of the first write, not a read before it: a
            // SQLite transaction that read first could not take the write lock once another
            // connection had written meanwhile.
            let (sql, creator) = match marker {
                Marker::Claim => (INSERT_WORKSPACE, None),
                Marker::Creator(creator) => (INSERT_WORKSPACE_IF_CALLER_VALID, Some(creator)),
            };
            let mut insert = sqlx::query(sql)
                .bind(ws.id.as_str())
                .bind(&ws.name)
                .bind(ws.parent_id.as_ref().map(|p| p.as_str()))
                .bind(ws.settings.max_token_lifetime_days.map(i64::from))
                .bind(ws.created_at)
                .bind(ws.updated_at)
                .bind(ws.status.as_str())
                .bind(ws.settings.audit_retention_days.map(i64::from))
                .bind(ws.settings.auto_revoke_unused_days.map(i64::from))
                .bind(ws.settings.ip_access_lists_suspended)
                .bind(ws.settings.data_retention_consent);
            if let Some(creator) = creator {
                insert = insert.bind(creator.as_str());
            }
            if insert.execute(&mut *tx).await?.rows_affected() == 0 {
                // Nothing was written; the transaction rolls back when dropped.
                return Err(Error::CallerRevoked);
            }
            sqlx::query(
                "INSERT INTO principals (id, workspace_id, kind, email, name, role, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(admin.id.as_str())
            .bind(admin.workspace_id.as_str())
            .bind(admin.kind.as_str())
            .bind(admin.email.as_ref().map(|e| e.as_str()))
            .bind(&admin.name)
            .bind(admin.role.as_str())
            .bind(admin.status.as_str())
            .bind(admin.created_at)
            .bind(admin.updated_at)
            .execute(&mut *tx)
            .await?;
            bind_token!(sqlx::query(INSERT_TOKEN), token)
            .execute(&mut *tx)
            .await?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// A workspace by id.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<Workspace> {
        let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1");
        let row: Option<WorkspaceRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// The ancestors of workspace `id` with their status, nearest first (its parent, then
    /// the parent's parent, up to the root); empty for a root workspace or an unknown id.
    /// One recursive query, the same on SQLite and PostgreSQL. The walk stops after
    /// [`MAX_CHAIN`] steps so that even a corrupt parent cycle cannot make it run forever.
    pub async fn workspace_ancestors(
        &self,
        id: &WorkspaceId,
    ) -> Result<Vec<(WorkspaceId, Status)>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(ANCESTORS)
                .bind(id.as_str())
                .bind(MAX_CHAIN)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(id, status)| {
                Ok((
                    WorkspaceId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
                    Status::parse(&status).map_err(|e| Error::Corrupt(e.to_string()))?,
                ))
            })
            .collect()
    }

    /// A workspace by id, if `viewer` may see it: its own workspace or any workspace below
    /// it (a child, a child's child, and so on). A workspace outside the viewer's subtree is
    /// `NotFound`, exactly like one that does not exist.
    pub async fn get_visible_workspace(
        &self,
        viewer: &WorkspaceId,
        id: &WorkspaceId,
    ) -> Result<Workspace> {
        let ws = self.get_workspace(id).await?;
        if &ws.id == viewer {
            return Ok(ws);
        }
        // Parents never change after creation, so the chain read here cannot go stale.
        let ancestors = self.workspace_ancestors(id).await?;
        if ancestors.iter().any(|(a, _)| a == viewer) {
            Ok(ws)
        } else {
            Err(Error::NotFound)
        }
    }

    /// The workspaces `viewer` may see (its own and every one below it) that match
    /// `filter`, ordered by id.
    pub async fn list_workspaces(
        &self,
        viewer: &WorkspaceId,
        filter: &WorkspaceFilter,
        page: &PageRequest,
    ) -> Result<Page<Workspace>> {
        let sql = format!(
            "WITH RECURSIVE down(id, depth) AS ( \
               SELECT id, 0 FROM workspaces WHERE id = $1 \
               UNION ALL \
               SELECT w.id, down.depth + 1 FROM workspaces w JOIN down ON w.parent_id = down.id \
               WHERE down.depth < $6) \
             SELECT {WORKSPACE_COLUMNS} FROM workspaces \
             WHERE id IN (SELECT id FROM down) AND id > $2 \
               AND ($4 IS NULL OR parent_id = $4) AND ($5 IS NULL OR status = $5) \
             ORDER BY id LIMIT $3"
        );
        let rows: Vec<WorkspaceRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(viewer.as_str())
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1)
                .bind(filter.parent.as_ref().map(|p| p.as_str()))
                .bind(filter.status.map(Status::as_str))
                .bind(MAX_CHAIN)
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(WorkspaceRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |w| {
            w.id.to_string()
        }))
    }

    /// Applies `patch` to a workspace `viewer` may see and returns the result. Cached
    /// credentials carry their workspace, so every node is told to drop that workspace's.
    pub async fn update_workspace(
        &self,
        viewer: &WorkspaceId,
        id: &WorkspaceId,
        patch: &WorkspacePatch,
        trail: &Trail,
    ) -> Result<Workspace> {
        let current = self.get_visible_workspace(viewer, id).await?;
        let name = patch.name.clone().unwrap_or(current.name);
        let settings = WorkspaceSettings {
            max_token_lifetime_days: patch
                .max_token_lifetime_days
                .unwrap_or(current.settings.max_token_lifetime_days),
            audit_retention_days: patch
                .audit_retention_days
                .unwrap_or(current.settings.audit_retention_days),
            auto_revoke_unused_days: patch
                .auto_revoke_unused_days
                .unwrap_or(current.settings.auto_revoke_unused_days),
            ip_access_lists_suspended: patch
                .ip_access_lists_suspended
                .unwrap_or(current.settings.ip_access_lists_suspended),
            data_retention_consent: patch
                .data_retention_consent
                .unwrap_or(current.settings.data_retention_consent),
        };
        let channel = self.announce_channel();
        let affected = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE workspaces SET name = $1, max_token_lifetime_days = $2, updated_at = $3, \
                 audit_retention_days = $5, auto_revoke_unused_days = $6, \
                 ip_access_lists_suspended = $7, data_retention_consent = $8 WHERE id = $4",
            )
            .bind(&name)
            .bind(settings.max_token_lifetime_days.map(i64::from))
            .bind(Utc::now())
            .bind(id.as_str())
            .bind(settings.audit_retention_days.map(i64::from))
            .bind(settings.auto_revoke_unused_days.map(i64::from))
            .bind(settings.ip_access_lists_suspended)
            .bind(settings.data_retention_consent)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, crate::Invalidation::Workspace(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            affected
        });
        if affected == 0 {
            return Err(Error::NotFound);
        }
        self.get_workspace(id).await
    }
}

impl Store {
    /// Suspends or reactivates a workspace below `viewer` (a child, or any descendant), and
    /// tells every node to drop the cached credentials of that workspace and of every
    /// workspace below it: a suspended workspace's whole subtree is refused. A workspace
    /// cannot change its own status (`Conflict`): it would lock its own admins out. A
    /// workspace outside `viewer`'s subtree is `NotFound`.
    pub async fn set_workspace_status(
        &self,
        viewer: &WorkspaceId,
        id: &WorkspaceId,
        status: Status,
        trail: &Trail,
    ) -> Result<Workspace> {
        if viewer == id {
            return Err(Error::Conflict(
                "a workspace cannot suspend or activate itself; an ancestor's admins can".into(),
            ));
        }
        // Parents never change after creation, so checking the chain before the update
        // cannot race with a move.
        let ancestors = self.workspace_ancestors(id).await?;
        if !ancestors.iter().any(|(a, _)| a == viewer) {
            return Err(Error::NotFound);
        }
        let channel = self.announce_channel();
        let affected = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE workspaces SET status = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(status.as_str())
            .bind(Utc::now())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected > 0 {
                announce!(tx, channel, crate::Invalidation::WorkspaceTree(id.to_string()));
                write_trail!(self, tx, trail);
            }
            tx.commit().await?;
            affected
        });
        if affected == 0 {
            return Err(Error::NotFound);
        }
        self.get_workspace(id).await
    }
}
