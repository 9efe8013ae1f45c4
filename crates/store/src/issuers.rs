//! Trusted external token issuers (federation), and which principal each of their
//! subjects is.

use chrono::{DateTime, Utc};
use datastack_core::id::{PrincipalId, TrustedIssuerId, WorkspaceId};
use datastack_core::oauth::{Provisioning, SubjectClaim, TrustedIssuer};
use datastack_core::scope::ScopeSet;

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::{json_list, json_text, scopes_of, scopes_text};
use crate::{Error, Page, PageRequest, Result, Store, announce, with_pool};

const ISSUER_COLUMNS: &str = "id, workspace_id, issuer, jwks_uri, audiences, algorithms, \
     subject_claim, provisioning, scope_claim, scopes, created_by, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct IssuerRow {
    id: String,
    workspace_id: String,
    issuer: String,
    jwks_uri: Option<String>,
    audiences: String,
    algorithms: String,
    subject_claim: String,
    provisioning: String,
    scope_claim: String,
    scopes: String,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl IssuerRow {
    fn into_domain(self) -> Result<TrustedIssuer> {
        Ok(TrustedIssuer {
            id: TrustedIssuerId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            issuer: self.issuer,
            jwks_uri: self.jwks_uri,
            audiences: json_list(&self.audiences, "issuer list")?,
            algorithms: json_list(&self.algorithms, "issuer list")?,
            subject_claim: SubjectClaim::from_name(&self.subject_claim)
                .ok_or_else(|| Error::Corrupt(format!("subject claim {}", self.subject_claim)))?,
            provisioning: Provisioning::from_name(&self.provisioning)
                .ok_or_else(|| Error::Corrupt(format!("provisioning {}", self.provisioning)))?,
            scope_claim: self.scope_claim,
            scopes: scopes_of(&self.scopes)?,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// What a PATCH of a trusted issuer changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct IssuerPatch {
    /// A new key set URL (`Some(None)`: use discovery).
    pub jwks_uri: Option<Option<String>>,
    /// New accepted audiences.
    pub audiences: Option<Vec<String>>,
    /// New accepted algorithms.
    pub algorithms: Option<Vec<String>>,
    /// New provisioning.
    pub provisioning: Option<Provisioning>,
    /// New scope claim.
    pub scope_claim: Option<String>,
    /// New most scopes.
    pub scopes: Option<ScopeSet>,
}

fn issuer_taken(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(ref d) if d.is_unique_violation() => {
            Error::Conflict("this issuer is trusted already (by this or another workspace)".into())
        }
        other => other.into(),
    }
}

impl Store {
    /// Stores a new trusted issuer with its subject links, announcing it to every node.
    pub async fn insert_issuer(
        &self,
        issuer: &TrustedIssuer,
        links: &[(String, PrincipalId)],
        trail: &Trail,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO oauth_issuers ({ISSUER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(&sql)
                .bind(issuer.id.as_str())
                .bind(issuer.workspace_id.as_str())
                .bind(&issuer.issuer)
                .bind(issuer.jwks_uri.as_deref())
                .bind(json_text(&issuer.audiences))
                .bind(json_text(&issuer.algorithms))
                .bind(issuer.subject_claim.as_str())
                .bind(issuer.provisioning.as_str())
                .bind(&issuer.scope_claim)
                .bind(scopes_text(&issuer.scopes))
                .bind(issuer.created_by.as_deref())
                .bind(issuer.created_at)
                .bind(issuer.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(issuer_taken)?;
            for (subject, principal) in links {
                sqlx::query(
                    "INSERT INTO oauth_issuer_subjects (issuer_id, subject, principal_id, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(issuer.id.as_str())
                .bind(subject)
                .bind(principal.as_str())
                .bind(issuer.created_at)
                .execute(&mut *tx)
                .await?;
            }
            announce!(tx, channel, Invalidation::Issuer(issuer.id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// A page of the workspace's trusted issuers.
    pub async fn list_issuers(
        &self,
        workspace: &WorkspaceId,
        page: &PageRequest,
    ) -> Result<Page<TrustedIssuer>> {
        let sql = format!(
            "SELECT {ISSUER_COLUMNS} FROM oauth_issuers WHERE workspace_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let rows: Vec<IssuerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(IssuerRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |i| {
            i.id.to_string()
        }))
    }

    /// Every trusted issuer (what each node keeps in memory).
    pub async fn all_issuers(&self) -> Result<Vec<TrustedIssuer>> {
        let sql = format!("SELECT {ISSUER_COLUMNS} FROM oauth_issuers ORDER BY id");
        let rows: Vec<IssuerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(IssuerRow::into_domain).collect()
    }

    /// A trusted issuer of the workspace.
    pub async fn get_issuer(
        &self,
        workspace: &WorkspaceId,
        id: &TrustedIssuerId,
    ) -> Result<TrustedIssuer> {
        let sql = format!(
            "SELECT {ISSUER_COLUMNS} FROM oauth_issuers WHERE id = $1 AND workspace_id = $2"
        );
        let row: Option<IssuerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// Applies a PATCH (and adds subject links), announcing it; returns the issuer as
    /// changed.
    pub async fn update_issuer(
        &self,
        workspace: &WorkspaceId,
        id: &TrustedIssuerId,
        patch: &IssuerPatch,
        links: &[(String, PrincipalId)],
        trail: &Trail,
    ) -> Result<TrustedIssuer> {
        let channel = self.announce_channel();
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE oauth_issuers SET \
                   jwks_uri = CASE WHEN $3 THEN $4 ELSE jwks_uri END, \
                   audiences = COALESCE($5, audiences), algorithms = COALESCE($6, algorithms), \
                   provisioning = COALESCE($7, provisioning), scope_claim = COALESCE($8, scope_claim), \
                   scopes = COALESCE($9, scopes), updated_at = $10 \
                 WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(patch.jwks_uri.is_some())
            .bind(patch.jwks_uri.clone().flatten())
            .bind(patch.audiences.as_deref().map(json_text))
            .bind(patch.algorithms.as_deref().map(json_text))
            .bind(patch.provisioning.map(Provisioning::as_str))
            .bind(patch.scope_claim.as_deref())
            .bind(patch.scopes.as_ref().map(scopes_text))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            for (subject, principal) in links {
                sqlx::query(
                    "INSERT INTO oauth_issuer_subjects (issuer_id, subject, principal_id, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (issuer_id, subject) DO UPDATE SET principal_id = $3",
                )
                .bind(id.as_str())
                .bind(subject)
                .bind(principal.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            announce!(tx, channel, Invalidation::Issuer(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_issuer(workspace, id).await
    }

    /// Deletes a trusted issuer: its tokens are refused on every node.
    pub async fn delete_issuer(
        &self,
        workspace: &WorkspaceId,
        id: &TrustedIssuerId,
        trail: &Trail,
    ) -> Result<()> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM oauth_issuer_subjects WHERE issuer_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let affected = sqlx::query("DELETE FROM oauth_issuers WHERE id = $1 AND workspace_id = $2")
                .bind(id.as_str())
                .bind(workspace.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::Issuer(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The principal an issuer's subject is linked to.
    pub async fn issuer_subject(
        &self,
        issuer: &TrustedIssuerId,
        subject: &str,
    ) -> Result<Option<PrincipalId>> {
        let row: Option<(String,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT principal_id FROM oauth_issuer_subjects WHERE issuer_id = $1 AND subject = $2",
            )
            .bind(issuer.as_str())
            .bind(subject)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(p,)| PrincipalId::from_trusted(p)))
    }

    /// Links an issuer's subject to a principal (just-in-time provisioning); an existing
    /// link wins (two nodes provisioning at once keep the first).
    pub async fn link_issuer_subject(
        &self,
        issuer: &TrustedIssuerId,
        subject: &str,
        principal: &PrincipalId,
    ) -> Result<PrincipalId> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO oauth_issuer_subjects (issuer_id, subject, principal_id, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (issuer_id, subject) DO NOTHING",
            )
            .bind(issuer.as_str())
            .bind(subject)
            .bind(principal.as_str())
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(self
            .issuer_subject(issuer, subject)
            .await?
            .unwrap_or_else(|| principal.clone()))
    }
}
