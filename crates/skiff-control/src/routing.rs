//! The route reconciler: keeps the router and the autoscalers in line with the stored
//! Services and revisions.
//!
//! # Design
//! It holds the Services and revisions in memory (an informer's cache, as client-go's): a
//! changed key is read once and replaces its entry, so a change costs one store read, not a
//! listing, and marks its Service changed. When its queue drains, the part of the table of
//! each changed Service is rebuilt from the cache ([`crate::routes::build_service`], a pure
//! function) and handed to [`Serving::update`], which changes only those hosts and pools: an
//! apply costs the same with 10 Services or 1,000. Only then does its watermark move, which
//! is what the API waits on to answer a write: a Service is routable when `apply` answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use skiff_api::object::{Revision, Service};

use crate::controller::{Controller, ControllerError, parse_revision_key};
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::routes::build_service;
use crate::serving::{ServiceKey, ServiceRoutes, Serving};

use skiff_store::keys::{self, REVISIONS, SERVICES};

/// The key that stands for "everything", queued at start once the cache is filled.
const ALL: &str = "";

#[derive(Default)]
struct Cache {
    services: BTreeMap<ServiceKey, Service>,
    revisions: BTreeMap<(String, String), Revision>,
    /// Revision names by (namespace, Service); revisions of no Service under "".
    by_service: BTreeMap<ServiceKey, BTreeSet<String>>,
    /// Services whose routes changed since the last table.
    dirty: BTreeSet<ServiceKey>,
    /// Every Service changed (the cache was filled from a listing).
    all_dirty: bool,
}

fn owner(r: &Revision) -> ServiceKey {
    (
        r.metadata.namespace.clone(),
        r.service_name().unwrap_or_default().to_owned(),
    )
}

impl Cache {
    fn put_revision(&mut self, key: (String, String), r: Option<Revision>) {
        if let Some(old) = self.revisions.remove(&key) {
            let svc = owner(&old);
            if let Some(names) = self.by_service.get_mut(&svc) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.by_service.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
        if let Some(r) = r {
            let svc = owner(&r);
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone());
            self.dirty.insert(svc);
            self.revisions.insert(key, r);
        }
    }

    /// One Service's routes from the cache.
    fn routes_of(&self, key: &ServiceKey, domain: &str) -> ServiceRoutes<'_> {
        let revisions: Vec<&Revision> = self
            .by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.revisions.get(&(key.0.clone(), name.clone())))
            .collect();
        // A Service's revisions, never a Service named "" (no such name is valid).
        let service = self.services.get(key).filter(|_| !key.1.is_empty());
        ServiceRoutes {
            key: key.clone(),
            table: build_service(service, revisions.clone(), domain),
            revisions,
        }
    }
}

/// Routes by the stored objects.
pub struct RouteReconciler {
    controller: Controller,
    serving: Arc<Serving>,
    cache: Mutex<Cache>,
}

impl RouteReconciler {
    /// A reconciler feeding `serving`.
    pub fn new(controller: Controller, serving: Arc<Serving>) -> Self {
        RouteReconciler {
            controller,
            serving,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_service_key(key: &str) -> Option<(String, String)> {
    let (ns, name) = keys::parse_service(key)?;
    Some((ns.to_owned(), name.to_owned()))
}

#[async_trait]
impl Reconciler for RouteReconciler {
    type Key = String;

    fn name(&self) -> &'static str {
        "routes"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[SERVICES, REVISIONS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<String> {
        vec![store_key.to_owned()]
    }

    async fn all_keys(&self) -> Result<Vec<String>, ReconcileError> {
        let services = self.controller.list_services(None).await?;
        let revisions = self.controller.list_revisions(None, None).await?;
        let mut cache = self.cache();
        *cache = Cache::default();
        cache.services = services
            .into_iter()
            .map(|s| ((s.metadata.namespace.clone(), s.metadata.name.clone()), s))
            .collect();
        for r in revisions {
            let key = (r.metadata.namespace.clone(), r.metadata.name.clone());
            cache.put_revision(key, Some(r));
        }
        cache.all_dirty = true;
        Ok(vec![ALL.to_owned()])
    }

    async fn reconcile(&self, key: &String) -> Result<Next, ReconcileError> {
        if let Some((ns, name)) = parse_service_key(key) {
            let found = match self.controller.get_service(&ns, &name).await {
                Ok(s) => Some(s),
                Err(ControllerError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let mut cache = self.cache();
            let key = (ns, name);
            match found {
                Some(s) => cache.services.insert(key.clone(), s),
                None => cache.services.remove(&key),
            };
            cache.dirty.insert(key);
        } else if let Some((ns, name)) = parse_revision_key(key) {
            let found = match self.controller.get_revision(&ns, &name).await {
                Ok(r) => Some(r),
                Err(ControllerError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            self.cache().put_revision((ns, name), found);
        }
        Ok(Next::Done)
    }

    async fn settled(&self) {
        // Built from the cache in place (no copies of the objects): the lock is held only by
        // this reconciler's one worker and the table build, which does not wait.
        let mut cache = self.cache();
        let full = std::mem::take(&mut cache.all_dirty);
        let dirty = std::mem::take(&mut cache.dirty);
        let keys: BTreeSet<ServiceKey> = if full {
            cache
                .services
                .keys()
                .chain(cache.by_service.keys())
                .cloned()
                .collect()
        } else {
            dirty
        };
        let domain = self.serving.router().domain();
        let changed = keys.iter().map(|k| cache.routes_of(k, domain)).collect();
        self.serving.update(changed, full);
    }
}
