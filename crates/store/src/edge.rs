//! Edge enforcement records: gateway routes, IP access lists and abuse flags. Every change
//! writes its audit trail in the same transaction and, on PostgreSQL, announces itself so
//! every node reloads the rule it changed.

use chrono::{DateTime, Utc};
use datastack_core::edge::{ListType, RouteSpec};
use datastack_core::id::{AbuseFlagId, IpListId, RouteId, WorkspaceId};

use crate::audit::{Trail, write_trail};
use crate::{Error, Invalidation, Result, Store, announce, unique_violation, with_pool};

/// A gateway route kept in the store.
#[derive(Debug, Clone)]
pub struct StoredRoute {
    /// Its id.
    pub id: RouteId,
    /// What it does.
    pub spec: RouteSpec,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An IP access list of a workspace.
#[derive(Debug, Clone)]
pub struct IpAccessList {
    /// Its id.
    pub id: IpListId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// A name, unique in the workspace.
    pub label: String,
    /// Allow or block.
    pub list_type: ListType,
    /// Normalised addresses and ranges (`203.0.113.0/24`, `2001:db8::/32`).
    pub ip_addresses: Vec<String>,
    /// Whether it is enforced.
    pub enabled: bool,
    /// Who created it.
    pub created_by: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A client flagged for sending while rate-limited.
#[derive(Debug, Clone)]
pub struct AbuseFlag {
    /// Its id.
    pub id: AbuseFlagId,
    /// The workspace it concerns (the root workspace for anonymous addresses).
    pub workspace_id: WorkspaceId,
    /// `credential` or `ip`.
    pub subject_kind: String,
    /// The credential id, workspace id or address.
    pub subject: String,
    /// How many times in a row it was flagged (the penalty grows with it).
    pub level: u32,
    /// Requests refused while limited that raised the flag.
    pub rejected: u64,
    /// When.
    pub flagged_at: DateTime<Utc>,
    /// Until when every request of the subject is refused.
    pub penalty_until: DateTime<Utc>,
    /// When an admin cleared it.
    pub cleared_at: Option<DateTime<Utc>>,
    /// Who cleared it.
    pub cleared_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RouteRow {
    id: String,
    spec: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl RouteRow {
    fn into_domain(self) -> Result<StoredRoute> {
        let spec: RouteSpec = serde_json::from_str(&self.spec)
            .map_err(|e| Error::Corrupt(format!("gateway route {}: {e}", self.id)))?;
        Ok(StoredRoute {
            id: RouteId::from_trusted(self.id),
            spec,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct IpListRow {
    id: String,
    workspace_id: String,
    label: String,
    list_type: String,
    ip_addresses: String,
    enabled: bool,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl IpListRow {
    fn into_domain(self) -> Result<IpAccessList> {
        Ok(IpAccessList {
            list_type: ListType::parse(&self.list_type)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
            ip_addresses: serde_json::from_str(&self.ip_addresses)
                .map_err(|e| Error::Corrupt(format!("ip access list {}: {e}", self.id)))?,
            id: IpListId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            label: self.label,
            enabled: self.enabled,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AbuseRow {
    id: String,
    workspace_id: String,
    subject_kind: String,
    subject: String,
    level: i64,
    rejected: i64,
    flagged_at: DateTime<Utc>,
    penalty_until: DateTime<Utc>,
    cleared_at: Option<DateTime<Utc>>,
    cleared_by: Option<String>,
}

impl AbuseRow {
    fn into_domain(self) -> AbuseFlag {
        AbuseFlag {
            id: AbuseFlagId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            subject_kind: self.subject_kind,
            subject: self.subject,
            level: u32::try_from(self.level).unwrap_or(u32::MAX),
            rejected: u64::try_from(self.rejected).unwrap_or(0),
            flagged_at: self.flagged_at,
            penalty_until: self.penalty_until,
            cleared_at: self.cleared_at,
            cleared_by: self.cleared_by,
        }
    }
}

const IP_LIST_COLUMNS: &str =
    "id, workspace_id, label, list_type, ip_addresses, enabled, created_by, created_at, updated_at";
const ABUSE_COLUMNS: &str = "id, workspace_id, subject_kind, subject, level, rejected, flagged_at, penalty_until, cleared_at, cleared_by";

fn route_taken(e: sqlx::Error) -> Error {
    if unique_violation(&e) {
        Error::Conflict("a route with this pathPrefix already exists".into())
    } else {
        e.into()
    }
}

fn label_taken(e: sqlx::Error) -> Error {
    if unique_violation(&e) {
        Error::Conflict("an IP access list with this label already exists in the workspace".into())
    } else {
        e.into()
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(e.to_string()))
}

impl Store {
    /// Every stored gateway route.
    pub async fn list_routes(&self) -> Result<Vec<StoredRoute>> {
        let rows: Vec<RouteRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, spec, created_at, updated_at FROM gateway_routes ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(RouteRow::into_domain).collect()
    }

    /// Stores a new route.
    pub async fn insert_route(&self, route: &StoredRoute, trail: &Trail) -> Result<()> {
        let spec = to_json(&route.spec)?;
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO gateway_routes (id, path_prefix, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(route.id.as_str())
            .bind(&route.spec.path_prefix)
            .bind(&spec)
            .bind(route.created_at)
            .bind(route.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(route_taken)?;
            announce!(tx, channel, Invalidation::Routes);
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Replaces a route's spec.
    pub async fn update_route(
        &self,
        id: &RouteId,
        spec: &RouteSpec,
        trail: &Trail,
    ) -> Result<StoredRoute> {
        let text = to_json(spec)?;
        let channel = self.announce_channel();
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE gateway_routes SET path_prefix = $1, spec = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(&spec.path_prefix)
            .bind(&text)
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(route_taken)?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::Routes);
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        self.get_route(id).await
    }

    /// One route.
    pub async fn get_route(&self, id: &RouteId) -> Result<StoredRoute> {
        let row: Option<RouteRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, spec, created_at, updated_at FROM gateway_routes WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// Deletes a route.
    pub async fn delete_route(&self, id: &RouteId, trail: &Trail) -> Result<()> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query("DELETE FROM gateway_routes WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::Routes);
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The IP access lists of a workspace, by id.
    pub async fn list_ip_lists(&self, workspace: &WorkspaceId) -> Result<Vec<IpAccessList>> {
        let sql = format!(
            "SELECT {IP_LIST_COLUMNS} FROM ip_access_lists WHERE workspace_id = $1 ORDER BY id"
        );
        let rows: Vec<IpListRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(workspace.as_str()).fetch_all(pool).await?
        });
        rows.into_iter().map(IpListRow::into_domain).collect()
    }

    /// One IP access list of a workspace.
    pub async fn get_ip_list(
        &self,
        workspace: &WorkspaceId,
        id: &IpListId,
    ) -> Result<IpAccessList> {
        let sql = format!(
            "SELECT {IP_LIST_COLUMNS} FROM ip_access_lists WHERE workspace_id = $1 AND id = $2"
        );
        let row: Option<IpListRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// Stores a new list.
    pub async fn insert_ip_list(&self, list: &IpAccessList, trail: &Trail) -> Result<()> {
        let addresses = to_json(&list.ip_addresses)?;
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO ip_access_lists (id, workspace_id, label, list_type, ip_addresses, enabled, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(list.id.as_str())
            .bind(list.workspace_id.as_str())
            .bind(&list.label)
            .bind(list.list_type.as_str())
            .bind(&addresses)
            .bind(list.enabled)
            .bind(list.created_by.as_deref())
            .bind(list.created_at)
            .bind(list.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(label_taken)?;
            announce!(tx, channel, Invalidation::IpLists(list.workspace_id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Replaces a list's label, type, addresses and enabled flag.
    pub async fn update_ip_list(&self, list: &IpAccessList, trail: &Trail) -> Result<()> {
        let addresses = to_json(&list.ip_addresses)?;
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE ip_access_lists SET label = $1, list_type = $2, ip_addresses = $3, enabled = $4, updated_at = $5 \
                 WHERE workspace_id = $6 AND id = $7",
            )
            .bind(&list.label)
            .bind(list.list_type.as_str())
            .bind(&addresses)
            .bind(list.enabled)
            .bind(list.updated_at)
            .bind(list.workspace_id.as_str())
            .bind(list.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(label_taken)?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::IpLists(list.workspace_id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a list.
    pub async fn delete_ip_list(
        &self,
        workspace: &WorkspaceId,
        id: &IpListId,
        trail: &Trail,
    ) -> Result<()> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query("DELETE FROM ip_access_lists WHERE workspace_id = $1 AND id = $2")
                .bind(workspace.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::IpLists(workspace.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records a flag with its audit entry and security event.
    pub async fn insert_abuse_flag(&self, flag: &AbuseFlag, trail: &Trail) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO abuse_flags (id, workspace_id, subject_kind, subject, level, rejected, flagged_at, penalty_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(flag.id.as_str())
            .bind(flag.workspace_id.as_str())
            .bind(&flag.subject_kind)
            .bind(&flag.subject)
            .bind(i64::from(flag.level))
            .bind(i64::try_from(flag.rejected).unwrap_or(i64::MAX))
            .bind(flag.flagged_at)
            .bind(flag.penalty_until)
            .execute(&mut *tx)
            .await?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Flags, newest first: of one workspace, or of every workspace when `workspace` is
    /// `None`; only those not cleared when `active_only`.
    pub async fn list_abuse_flags(
        &self,
        workspace: Option<&WorkspaceId>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<AbuseFlag>> {
        let sql = format!(
            "SELECT {ABUSE_COLUMNS} FROM abuse_flags \
             WHERE ($1 IS NULL OR workspace_id = $1) AND ($2 = FALSE OR cleared_at IS NULL) \
             ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<AbuseRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.map(|w| w.as_str()))
                .bind(active_only)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(AbuseRow::into_domain).collect())
    }

    /// Clears a flag (and, in the same transaction, every other uncleared flag of the same
    /// subject, whose penalty the clearing lifts too); announces it so every node lifts the
    /// penalty.
    pub async fn clear_abuse_flag(
        &self,
        workspace: Option<&WorkspaceId>,
        id: &AbuseFlagId,
        by: &str,
        trail: impl FnOnce(&AbuseFlag) -> Trail,
    ) -> Result<AbuseFlag> {
        let sql = format!(
            "SELECT {ABUSE_COLUMNS} FROM abuse_flags WHERE id = $1 AND ($2 IS NULL OR workspace_id = $2)"
        );
        let channel = self.announce_channel();
        let now = Utc::now();
        let flag = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Write first: on SQLite this takes the write lock before anything is read, so
            // a commit by another connection cannot invalidate what this one read.
            let cleared = sqlx::query(
                "UPDATE abuse_flags SET cleared_at = $1, cleared_by = $2 \
                 WHERE id = $3 AND ($4 IS NULL OR workspace_id = $4) AND cleared_at IS NULL",
            )
            .bind(now)
            .bind(by)
            .bind(id.as_str())
            .bind(workspace.map(|w| w.as_str()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row: Option<AbuseRow> = sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.map(|w| w.as_str()))
                .fetch_optional(&mut *tx)
                .await?;
            let flag = row.ok_or(Error::NotFound)?.into_domain();
            if cleared == 0 {
                return Err(Error::Conflict("the flag is already cleared".into()));
            }
            // Every other flag of the subject: the penalty they describe is lifted too.
            sqlx::query(
                "UPDATE abuse_flags SET cleared_at = $1, cleared_by = $2 \
                 WHERE subject_kind = $3 AND subject = $4 AND cleared_at IS NULL",
            )
            .bind(now)
            .bind(by)
            .bind(&flag.subject_kind)
            .bind(&flag.subject)
            .execute(&mut *tx)
            .await?;
            let trail = trail(&flag);
            announce!(tx, channel, Invalidation::Penalty(format!("{}:{}", flag.subject_kind, flag.subject)));
            write_trail!(self, tx, &trail);
            tx.commit().await?;
            flag
        });
        Ok(flag)
    }
}
