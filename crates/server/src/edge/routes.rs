//! The gateway's route table: routes from `datastack.toml` (read-only) and routes managed
//! through the API (in the store), held in memory as one snapshot that requests read
//! without locking for long. A change on this node reloads it at once; other nodes reload
//! on the change's announcement, and every node reloads every 30 seconds as a safety net.

use std::sync::{Arc, RwLock};

use datastack_core::edge::RouteSpec;
use datastack_core::id::RouteId;
use datastack_core::route_path::{self, PathRefusal};
use datastack_store::Store;

/// A route in force.
#[derive(Debug)]
pub struct ActiveRoute {
    /// The stored route's id; `None` for a route from the configuration file.
    pub id: Option<RouteId>,
    /// What it does.
    pub spec: RouteSpec,
    /// When it was created (API routes).
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed (API routes).
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The prefix in its loose form ([`route_path::loose_prefix`]), computed once.
    loose_prefix: Vec<String>,
}

impl ActiveRoute {
    fn new(
        id: Option<RouteId>,
        spec: RouteSpec,
        created_at: Option<chrono::DateTime<chrono::Utc>>,
        updated_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        Self {
            loose_prefix: route_path::loose_prefix(&spec.path_prefix),
            id,
            spec,
            created_at,
            updated_at,
        }
    }
}

/// The table.
pub struct RouteTable {
    store: Store,
    config_routes: Vec<Arc<ActiveRoute>>,
    current: RwLock<Arc<Vec<Arc<ActiveRoute>>>>,
    /// Numbers each reload in the order it started, and the newest one applied: a reload
    /// that read the store before another must not overwrite that one's result.
    started: std::sync::atomic::AtomicU64,
    applied: std::sync::Mutex<u64>,
}

impl RouteTable {
    /// A table with the configuration's routes; call [`RouteTable::reload`] to add the
    /// store's.
    pub fn new(store: Store, config_routes: &[RouteSpec]) -> Self {
        let config_routes: Vec<Arc<ActiveRoute>> = config_routes
            .iter()
            .map(|spec| Arc::new(ActiveRoute::new(None, spec.clone(), None, None)))
            .collect();
        Self {
            store,
            current: RwLock::new(Arc::new(config_routes.clone())),
            config_routes,
            started: std::sync::atomic::AtomicU64::new(0),
            applied: std::sync::Mutex::new(0),
        }
    }

    /// Reads the store's routes again.
    pub async fn reload(&self) -> Result<(), datastack_store::Error> {
        let seq = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let stored = self.store.list_routes().await?;
        let mut routes = self.config_routes.clone();
        for r in stored {
            // A configured route wins over a stored one with the same prefix.
            if routes
                .iter()
                .any(|c| c.spec.path_prefix == r.spec.path_prefix)
            {
                continue;
            }
            routes.push(Arc::new(ActiveRoute::new(
                Some(r.id),
                r.spec,
                Some(r.created_at),
                Some(r.updated_at),
            )));
        }
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if seq > *applied {
            *applied = seq;
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        }
        Ok(())
    }

    /// Every route in force.
    pub fn all(&self) -> Arc<Vec<Arc<ActiveRoute>>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The route for `path`: the longest matching prefix, provided every way an upstream
    /// might read the path's spelling falls under that same route (see
    /// [`datastack_core::route_path`]). `Ok(None)`: no route covers it.
    pub fn resolve(&self, path: &str) -> Result<Option<Arc<ActiveRoute>>, PathRefusal> {
        let routes = self.all();
        route_path::resolve_with(&routes, |r| &r.spec, |r| &r.loose_prefix, path)
            .map(|r| r.cloned())
    }

    /// Whether a configured route has this prefix.
    pub fn configured(&self, prefix: &str) -> bool {
        self.config_routes
            .iter()
            .any(|r| r.spec.path_prefix == prefix)
    }
}
