//! The route reconciler: keeps the router and the autoscalers in line with the stored
//! Services and revisions.
//!
//! # Design
//! It holds the Services and revisions in memory (an informer's cache, as client-go's): a
//! changed key is read once and replaces its entry, so a change costs one store read, not a
//! listing. When its queue drains, the table is rebuilt from the cache
//! ([`crate::routes::build`], a pure function) and handed to [`Serving::sync`]; only then
//! does its watermark move, which is what the API waits on to answer a write: a Service is
//! routable when `apply` answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use skiff_api::object::{Revision, Service};

use crate::controller::{Controller, ControllerError, parse_revision_key};
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::serving::Serving;

use skiff_store::keys::{self, REVISIONS, SERVICES};

/// The key that stands for "everything", queued at start once the cache is filled.
const ALL: &str = "";

#[derive(Default)]
struct Cache {
    services: BTreeMap<(String, String), Service>,
    revisions: BTreeMap<(String, String), Revision>,
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
        cache.services = services
            .into_iter()
            .map(|s| ((s.metadata.namespace.clone(), s.metadata.name.clone()), s))
            .collect();
        cache.revisions = revisions
            .into_iter()
            .map(|r| ((r.metadata.namespace.clone(), r.metadata.name.clone()), r))
            .collect();
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
            match found {
                Some(s) => cache.services.insert((ns, name), s),
                None => cache.services.remove(&(ns, name)),
            };
        } else if let Some((ns, name)) = parse_revision_key(key) {
            let found = match self.controller.get_revision(&ns, &name).await {
                Ok(r) => Some(r),
                Err(ControllerError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let mut cache = self.cache();
            match found {
                Some(r) => cache.revisions.insert((ns, name), r),
                None => cache.revisions.remove(&(ns, name)),
            };
        }
        Ok(Next::Done)
    }

    async fn settled(&self) {
        // Built from the cache in place (no copies of the objects): the lock is held only by
        // this reconciler's one worker and the table build, which does not wait.
        let cache = self.cache();
        let services: Vec<&Service> = cache.services.values().collect();
        let revisions: Vec<&Revision> = cache.revisions.values().collect();
        self.serving.sync(&services, &revisions);
    }
}
