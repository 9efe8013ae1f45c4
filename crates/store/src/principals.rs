//! Users and service principals.

use chrono::Utc;
use datastack_core::authz::Role;
use datastack_core::id::{PrincipalId, WorkspaceId};
use datastack_core::model::{Principal, PrincipalKind, Status};
use datastack_core::validate::Email;

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::PrincipalRow;
use crate::{Error, Page, PageRequest, Result, Store, announce, unique_violation, with_pool};

/// A principal to create.
#[derive(Debug, Clone)]
pub struct NewPrincipal {
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// User or service principal.
    pub kind: PrincipalKind,
    /// A user's email.
    pub email: Option<Email>,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// A change to a principal; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PrincipalPatch {
    /// A new display name.
    pub name: Option<String>,
    /// A new role.
    pub role: Option<Role>,
    /// A new status.
    pub status: Option<Status>,
}

/// Which principals a list returns.
#[derive(Debug, Clone)]
pub struct PrincipalFilter {
    /// Users or service principals.
    pub kind: PrincipalKind,
    /// Only this role.
    pub role: Option<Role>,
    /// Only this status.
    pub status: Option<Status>,
}

const PRINCIPAL_COLUMNS: &str =
    "id, workspace_id, kind, email, name, role, status, created_at, updated_at";

const LAST_ADMIN: &str = "this change would leave the workspace without an active admin";

/// In transaction `$tx`, touches the workspace row and reads the principal (or returns
/// `NotFound`). Touching the row first serialises admin changes per workspace on both
/// engines, so two concurrent demotions cannot both pass [`ensure_another_active_admin`].
macro_rules! lock_workspace_and_read {
    ($tx:ident, $select:expr, $workspace:expr, $kind:expr, $id:expr) => {{
        sqlx::query("UPDATE workspaces SET updated_at = updated_at WHERE id = $1")
            .bind($workspace.as_str())
            .execute(&mut *$tx)
            .await?;
        let row: Option<PrincipalRow> = sqlx::query_as($select)
            .bind($id.as_str())
            .bind($workspace.as_str())
            .bind($kind.as_str())
            .fetch_optional(&mut *$tx)
            .await?;
        row.ok_or(Error::NotFound)?.into_domain()?
    }};
}

/// In transaction `$tx`, returns `Conflict` unless the workspace keeps another active admin
/// besides `$id`.
macro_rules! ensure_another_active_admin {
    ($tx:ident, $workspace:expr, $id:expr) => {{
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM principals WHERE workspace_id = $1 AND role = 'admin' \
             AND status = 'active' AND id <> $2",
        )
        .bind($workspace.as_str())
        .bind($id.as_str())
        .fetch_one(&mut *$tx)
        .await?;
        if others == 0 {
            return Err(Error::Conflict(LAST_ADMIN.into()));
        }
    }};
}

impl Store {
    /// Creates a principal. A user whose email the workspace already has → `Conflict`.
    /// `trail` builds the audit trail of the creation from the new principal; it is written
    /// in the same transaction.
    pub async fn create_principal(
        &self,
        new: &NewPrincipal,
        trail: impl FnOnce(&Principal) -> Trail,
    ) -> Result<Principal> {
        let now = Utc::now();
        let principal = Principal {
            id: match new.kind {
                PrincipalKind::User => PrincipalId::generate_user(),
                PrincipalKind::ServicePrincipal => PrincipalId::generate_service_principal(),
            },
            kind: new.kind,
            workspace_id: new.workspace_id.clone(),
            email: new.email.clone(),
            name: new.name.clone(),
            role: new.role,
            status: Status::Active,
            created_at: now,
            updated_at: now,
        };
        let trail = trail(&principal);
        let taken = |e: sqlx::Error| {
            if unique_violation(&e) {
                Error::Conflict("a user with this email already exists in the workspace".into())
            } else {
                e.into()
            }
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO principals (id, workspace_id, kind, email, name, role, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(principal.id.as_str())
            .bind(principal.workspace_id.as_str())
            .bind(principal.kind.as_str())
            .bind(principal.email.as_ref().map(|e| e.as_str()))
            .bind(&principal.name)
            .bind(principal.role.as_str())
            .bind(principal.status.as_str())
            .bind(principal.created_at)
            .bind(principal.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(taken)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(principal)
    }

    /// A principal of `workspace` by id and kind.
    pub async fn get_principal(
        &self,
        workspace: &WorkspaceId,
        kind: PrincipalKind,
        id: &PrincipalId,
    ) -> Result<Principal> {
        let sql = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1 AND workspace_id = $2 AND kind = $3"
        );
        let row: Option<PrincipalRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.as_str())
                .bind(kind.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// An active admin user of `workspace` (default: the root workspace, the one created at
    /// first start), the one with `email` if given, else the oldest. For break-glass
    /// recovery.
    pub async fn find_active_admin(
        &self,
        workspace: Option<&WorkspaceId>,
        email: Option<&Email>,
    ) -> Result<Principal> {
        let sql = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals \
             WHERE kind = 'user' AND role = 'admin' AND status = 'active' \
               AND ($1 IS NULL OR email = $1) \
               AND workspace_id = COALESCE($2, \
                   (SELECT id FROM workspaces WHERE parent_id IS NULL ORDER BY id LIMIT 1)) \
             ORDER BY id LIMIT 1"
        );
        let row: Option<PrincipalRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(email.map(Email::as_str))
                .bind(workspace.map(WorkspaceId::as_str))
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// The user of `workspace` with `email`, if there is one.
    pub async fn find_user_by_email(
        &self,
        workspace: &WorkspaceId,
        email: &Email,
    ) -> Result<Option<Principal>> {
        let sql = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals              WHERE workspace_id = $1 AND kind = 'user' AND email = $2"
        );
        let row: Option<PrincipalRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(email.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(PrincipalRow::into_domain).transpose()
    }

    /// The principal with `id` in any workspace.
    pub async fn get_principal_by_id(&self, id: &PrincipalId) -> Result<Option<Principal>> {
        let sql = format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1");
        let row: Option<PrincipalRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.map(PrincipalRow::into_domain).transpose()
    }

    /// The principals of `workspace` matching `filter`, ordered by id.
    pub async fn list_principals(
        &self,
        workspace: &WorkspaceId,
        filter: &PrincipalFilter,
        page: &PageRequest,
    ) -> Result<Page<Principal>> {
        let sql = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals \
             WHERE workspace_id = $1 AND kind = $2 AND ($3 IS NULL OR role = $3) \
               AND ($4 IS NULL OR status = $4) AND id > $5 \
             ORDER BY id LIMIT $6"
        );
        let rows: Vec<PrincipalRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(filter.kind.as_str())
                .bind(filter.role.map(Role::as_str))
                .bind(filter.status.map(Status::as_str))
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(PrincipalRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |p| {
            p.id.to_string()
        }))
    }

    /// Applies `patch` to a principal. Refuses (`Conflict`) a change that would leave the
    /// workspace without an active admin. Announces the change so every node drops cached
    /// credentials of the principal.
    pub async fn update_principal(
        &self,
        workspace: &WorkspaceId,
        kind: PrincipalKind,
        id: &PrincipalId,
        patch: &PrincipalPatch,
        trail: &Trail,
    ) -> Result<Principal> {
        let channel = self.announce_channel();
        let select = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1 AND workspace_id = $2 AND kind = $3"
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let current = lock_workspace_and_read!(tx, &select, workspace, kind, id);
            let role = patch.role.unwrap_or(current.role);
            let status = patch.status.unwrap_or(current.status);
            let was_active_admin = current.role == Role::Admin && current.status == Status::Active;
            let stays_active_admin = role == Role::Admin && status == Status::Active;
            if was_active_admin && !stays_active_admin {
                ensure_another_active_admin!(tx, workspace, id);
            }
            sqlx::query("UPDATE principals SET name = $1, role = $2, status = $3, updated_at = $4 WHERE id = $5")
                .bind(patch.name.as_deref().unwrap_or(&current.name))
                .bind(role.as_str())
                .bind(status.as_str())
                .bind(Utc::now())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            announce!(tx, channel, Invalidation::Principal(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        self.get_principal(workspace, kind, id).await
    }

    /// Deletes a principal and, with it, its tokens. Refuses (`Conflict`) to delete the
    /// last active admin.
    pub async fn delete_principal(
        &self,
        workspace: &WorkspaceId,
        kind: PrincipalKind,
        id: &PrincipalId,
        trail: &Trail,
    ) -> Result<()> {
        let channel = self.announce_channel();
        let select = format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = $1 AND workspace_id = $2 AND kind = $3"
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let current = lock_workspace_and_read!(tx, &select, workspace, kind, id);
            if current.role == Role::Admin && current.status == Status::Active {
                ensure_another_active_admin!(tx, workspace, id);
            }
            sqlx::query("DELETE FROM tokens WHERE owner_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM principals WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            announce!(tx, channel, Invalidation::Principal(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }
}
