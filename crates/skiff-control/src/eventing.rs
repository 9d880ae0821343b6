//! Eventing: Brokers, Triggers and PingSources (Knative Eventing's objects), stored like the
//! other kinds, and the reconciler that keeps their status and the delivery routes current
//! and fires PingSources on their schedules. Delivery itself (the broker ingress, the
//! durable queue's dispatcher) is [`crate::dispatch`].
//!
//! - **Routes.** Every Trigger becomes a subscription `trigger/<ns>/<name>` with its filters,
//!   subscriber and delivery policy (its own, else its Broker's, else skiff's default), and
//!   every PingSource one named `ping/<ns>/<name>`. The broker ingress matches an event
//!   against its Broker's Triggers when it accepts it and stores one delivery per match, in
//!   one transaction with the event ([`skiff_queue`]): an event is either durably on its way
//!   to every Trigger that matched or refused.
//! - **PingSources** fire through [`skiff_cron::decide`] (DST, missed runs): the event of a
//!   scheduled time has the id `<uid>-<unix seconds>`, so a receiver can tell a redelivery
//!   from a new tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_api::eventing::stored::{Broker, PingSource, Trigger};
use skiff_api::eventing::{
    self, BackoffPolicy, Delivery, SinkKind, SinkRef, ValidatedBroker, ValidatedPingSource,
    ValidatedTrigger,
};
use skiff_api::manifest::Document;
use skiff_api::object::{Addressable, ConditionStatus, ObjectMeta, set_condition};
use skiff_events::{CloudEvent, DeliveryPolicy, TriggerFilters};
use skiff_queue::Queue;
use skiff_store::{Store, Txn, TxnOutcome, keys};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::controller::{ApplyResult, Controller, ControllerError};
use crate::jobs::Jobs;
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::serving::Serving;

/// The host of the broker ingress, under the daemon's domain.
pub const BROKER_INGRESS_HOST: &str = "broker-ingress";
/// Retries of a delivery when neither the Trigger nor its Broker says (Knative drops a failed
/// event then; skiff retries, so that an accepted event is not lost to one bad answer).
pub const DEFAULT_RETRY: u32 = 3;
/// The first backoff when nothing says.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait for a subscriber's answer when the delivery spec sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const MAX_ATTEMPTS: usize = 16;

/// Where a subscription's events go and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The namespace.
    pub namespace: String,
    /// The subscriber.
    pub sink: SinkRef,
    /// Retries and backoff.
    pub policy: DeliveryPolicy,
    /// Where events go after their last failed attempt.
    pub dead_letter: Option<SinkRef>,
    /// The Broker replies are published to (a Trigger's).
    pub reply_broker: Option<String>,
}

/// One Trigger, as the ingress matches events with it.
#[derive(Debug, Clone)]
struct TriggerRoute {
    subscription: String,
    filters: TriggerFilters,
}

#[derive(Debug, Default)]
struct Routes {
    /// Brokers (namespace, name) with their delivery settings.
    brokers: HashMap<(String, String), Option<Delivery>>,
    /// Triggers by (namespace, broker).
    triggers: HashMap<(String, String), Vec<TriggerRoute>>,
    /// Every subscription's target.
    targets: HashMap<String, Target>,
    /// Triggers and PingSources (keys) by the sink they name, for keys_for.
    by_sink: HashMap<(String, SinkRef), HashSet<EventingKey>>,
    /// Keys to look at again (Triggers whose Broker changed).
    pending: HashSet<EventingKey>,
}

/// A Trigger's subscription.
pub fn trigger_subscription(ns: &str, name: &str) -> String {
    format!("trigger/{ns}/{name}")
}

/// A PingSource's subscription.
pub fn ping_subscription(ns: &str, name: &str) -> String {
    format!("ping/{ns}/{name}")
}

/// The dead-letter subscription of `subscription`.
pub fn dead_letter_subscription(subscription: &str) -> String {
    format!("deadletter/{subscription}")
}

/// The namespace of a subscription (`kind/<ns>/<name>`, or `deadletter/kind/<ns>/<name>`).
pub fn subscription_namespace(subscription: &str) -> &str {
    let s = subscription
        .strip_prefix("deadletter/")
        .unwrap_or(subscription);
    s.split('/').nth(1).unwrap_or("")
}

/// The policy of a delivery spec (the Trigger's, else the Broker's), with skiff's defaults.
pub fn policy(delivery: Option<&Delivery>) -> (DeliveryPolicy, Option<SinkRef>) {
    let d = delivery.cloned().unwrap_or_default();
    let dead_letter = d.dead_letter.clone();
    (
        DeliveryPolicy {
            retry: d.retry.unwrap_or(DEFAULT_RETRY),
            backoff_policy: match d.backoff_policy {
                BackoffPolicy::Linear => skiff_events::BackoffPolicy::Linear,
                BackoffPolicy::Exponential => skiff_events::BackoffPolicy::Exponential,
            },
            backoff_delay: d.backoff_delay.unwrap_or(DEFAULT_BACKOFF),
            dead_letter: dead_letter.is_some(),
            timeout: d.timeout,
        },
        dead_letter,
    )
}

/// A Trigger's filters as the events crate evaluates them.
pub fn filters(t: &ValidatedTrigger) -> TriggerFilters {
    fn one(f: &eventing::Filter) -> skiff_events::Filter {
        use skiff_events::Filter as E;
        let map = |a: &str, v: &str| BTreeMap::from([(a.to_owned(), v.to_owned())]);
        match f {
            eventing::Filter::Exact { attribute, value } => E::Exact(map(attribute, value)),
            eventing::Filter::Prefix { attribute, value } => E::Prefix(map(attribute, value)),
            eventing::Filter::Suffix { attribute, value } => E::Suffix(map(attribute, value)),
            eventing::Filter::All(fs) => E::All(fs.iter().map(one).collect()),
            eventing::Filter::Any(fs) => E::Any(fs.iter().map(one).collect()),
            eventing::Filter::Not(f) => E::Not(Box::new(one(f))),
        }
    }
    TriggerFilters {
        filter: (!t.attributes.is_empty())
            .then(|| skiff_events::Filter::Attributes(t.attributes.clone())),
        filters: t.filters.iter().map(one).collect(),
    }
}

/// A stored eventing object.
pub trait EventingObject: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// `broker`, `trigger`, `pingsource`.
    const KIND: &'static str;
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Its metadata, to change.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Its spec, to compare.
    fn spec_value(&self) -> Value;
    /// Takes `other`'s spec.
    fn take_spec(&mut self, other: &Self);
    /// Its store key.
    fn key(ns: &str, name: &str) -> String;
}

macro_rules! eventing_object {
    ($t:ty, $kind:literal, $key:path) => {
        impl EventingObject for $t {
            const KIND: &'static str = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
            fn spec_value(&self) -> Value {
                serde_json::to_value(&self.spec).unwrap_or(Value::Null)
            }
            fn take_spec(&mut self, other: &Self) {
                self.spec = other.spec.clone();
            }
            fn key(ns: &str, name: &str) -> String {
                $key(ns, name)
            }
        }
    };
}
eventing_object!(Broker, "broker", keys::broker);
eventing_object!(Trigger, "trigger", keys::trigger);
eventing_object!(PingSource, "pingsource", keys::pingsource);

/// A key of the eventing reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventingKey {
    /// A Broker (namespace, name).
    Broker(String, String),
    /// A Trigger.
    Trigger(String, String),
    /// A PingSource.
    Ping(String, String),
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ControllerError> {
    serde_json::from_slice(value).map_err(|source| ControllerError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("API objects serialize")
}

/// Re-reads a stored object's spec as its manifest (the rules live in one place).
fn revalidate<T: EventingObject, V>(
    o: &T,
    api_version: &str,
    kind: &str,
    read: fn(&Document) -> Result<V, skiff_api::problems::Problems>,
) -> Option<V> {
    let value = serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": o.meta().name, "namespace": o.meta().namespace},
        "spec": o.spec_value(),
    });
    read(&Document::from_value(value)).ok()
}

/// Brokers, Triggers and PingSources, their routes, and the queue their events wait in.
pub struct Eventing {
    pub(crate) controller: Controller,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) queue: Arc<Queue>,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) serving: Arc<Serving>,
    domain: String,
    ingress_port: u16,
    routes: RwLock<Routes>,
    /// Wakes the dispatcher (new deliveries, changed routes).
    pub(crate) wake: Notify,
    pub(crate) metrics: crate::dispatch::EventMetrics,
    /// Subscriptions with a worker delivering their events, and what wakes that worker.
    pub(crate) workers: Mutex<HashMap<String, Arc<Notify>>>,
    /// The stored Brokers and Triggers not yet reconciled since the daemon started (`None`
    /// until they are listed).
    loading: Mutex<Option<HashSet<EventingKey>>>,
    /// Every Broker and Trigger stored at start is in the routes: the ingress may match.
    loaded: std::sync::atomic::AtomicBool,
}

impl Eventing {
    /// Eventing over the controller's store, with its queue at `queue_path`.
    pub fn new(
        controller: Controller,
        queue: Arc<Queue>,
        jobs: Arc<Jobs>,
        serving: Arc<Serving>,
        domain: String,
        ingress_port: u16,
        metrics: crate::dispatch::EventMetrics,
    ) -> Arc<Self> {
        Arc::new(Eventing {
            store: controller.store().clone(),
            controller,
            queue,
            jobs,
            serving,
            domain,
            ingress_port,
            routes: RwLock::new(Routes::default()),
            wake: Notify::new(),
            metrics,
            workers: Mutex::new(HashMap::new()),
            loading: Mutex::new(None),
            loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the routes hold every Broker and Trigger that was stored when the daemon
    /// started. Until then the ingress refuses events (503): one accepted before its
    /// Triggers are loaded would match none of them and be lost.
    pub fn routes_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The Brokers and Triggers stored at start, listed: they must each be reconciled once
    /// before the routes are complete.
    fn loading(&self, keys: &[EventingKey]) {
        if self.routes_loaded() {
            return;
        }
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if loading.is_some() {
            return;
        }
        let set: HashSet<EventingKey> = keys
            .iter()
            .filter(|k| !matches!(k, EventingKey::Ping(..)))
            .cloned()
            .collect();
        if set.is_empty() {
            self.loaded
                .store(true, std::sync::atomic::Ordering::Release);
        } else {
            *loading = Some(set);
        }
    }

    /// `key` was reconciled: the routes are complete once every key listed at start was.
    fn loaded_one(&self, key: &EventingKey) {
        if self.routes_loaded() {
            return;
        }
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = loading.as_mut() {
            set.remove(key);
            if set.is_empty() {
                *loading = None;
                self.loaded
                    .store(true, std::sync::atomic::Ordering::Release);
                info!("eventing routes loaded: the broker ingress accepts events");
            }
        }
    }

    /// The broker ingress's host.
    pub fn ingress_host(&self) -> String {
        format!("{BROKER_INGRESS_HOST}.{}", self.domain)
    }

    /// A Broker's address.
    pub fn broker_url(&self, ns: &str, name: &str) -> String {
        format!(
            "http://{}:{}/{ns}/{name}",
            self.ingress_host(),
            self.ingress_port
        )
    }

    /// A Service's host at the ingress.
    pub fn service_host(&self, ns: &str, name: &str) -> String {
        format!("{name}.{ns}.{}", self.domain)
    }

    /// The ingress port.
    pub fn ingress_port(&self) -> u16 {
        self.ingress_port
    }

    fn sink_uri(&self, ns: &str, sink: &SinkRef) -> String {
        match sink.kind {
            SinkKind::Service => format!(
                "http://{}:{}",
                self.service_host(ns, &sink.name),
                self.ingress_port
            ),
            SinkKind::Broker => self.broker_url(ns, &sink.name),
            SinkKind::Job => format!("job://{ns}/{}", sink.name),
        }
    }

    fn routes(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The target of a subscription, if it still has one.
    pub fn target(&self, subscription: &str) -> Option<Target> {
        self.routes().targets.get(subscription).cloned()
    }

    /// Whether a Broker exists.
    pub fn has_broker(&self, ns: &str, name: &str) -> bool {
        self.routes()
            .brokers
            .contains_key(&(ns.to_owned(), name.to_owned()))
    }

    /// The subscriptions of `broker` whose Trigger matches `event`.
    pub fn matching(&self, ns: &str, broker: &str, event: &CloudEvent) -> Vec<String> {
        self.routes()
            .triggers
            .get(&(ns.to_owned(), broker.to_owned()))
            .map(|ts| {
                ts.iter()
                    .filter(|t| t.filters.matches(event))
                    .map(|t| t.subscription.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every subscription's target (the dispatcher's backlog is counted per subscriber).
    pub fn targets(&self) -> HashMap<String, Target> {
        self.routes().targets.clone()
    }

    // --- Stored objects ---------------------------------------------------------------

    async fn apply_object<T: EventingObject>(
        &self,
        new: T,
        resource_version: Option<&str>,
        dry_run: bool,
    ) -> Result<(ApplyResult, T), ControllerError> {
        let (ns, name) = (new.meta().namespace.clone(), new.meta().name.clone());
        let key = T::key(&ns, &name);
        for _ in 0..MAX_ATTEMPTS {
            let existing = self.store.get(&key).await?;
            let expected = existing.as_ref().map_or(0, |kv| kv.mod_revision);
            if let Some(want) = resource_version
                && want != expected.to_string()
            {
                return Err(ControllerError::Conflict {
                    message: format!(
                        "{} `{name}` changed since resourceVersion {want} (now {expected})",
                        T::KIND
                    ),
                });
            }
            let (result, obj) = match existing {
                None => (ApplyResult::Created, new.clone()),
                Some(kv) => {
                    let mut old: T = decode(&key, &kv.value)?;
                    let same_spec = old.spec_value() == new.spec_value();
                    if same_spec
                        && old.meta().labels == new.meta().labels
                        && old.meta().annotations == new.meta().annotations
                    {
                        old.meta_mut().resource_version = expected.to_string();
                        return Ok((ApplyResult::Unchanged, old));
                    }
                    if !same_spec {
                        old.meta_mut().generation += 1;
                        old.take_spec(&new);
                    }
                    old.meta_mut().labels = new.meta().labels.clone();
                    old.meta_mut().annotations = new.meta().annotations.clone();
                    (ApplyResult::Configured, old)
                }
            };
            if dry_run {
                return Ok((result, obj));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, expected)
                .put(&key, encode(&obj));
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                info!(kind = T::KIND, namespace = %ns, name = %name, result = result.as_str(), "stored");
                let mut obj = obj;
                obj.meta_mut().resource_version = revision.to_string();
                return Ok((result, obj));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("{} `{name}` changed concurrently; apply again", T::KIND),
        })
    }

    /// Reads an object.
    pub async fn get<T: EventingObject>(&self, ns: &str, name: &str) -> Result<T, ControllerError> {
        let key = T::key(ns, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ControllerError::NotFound {
                kind: T::KIND,
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })?;
        let mut o: T = decode(&key, &kv.value)?;
        o.meta_mut().resource_version = kv.mod_revision.to_string();
        Ok(o)
    }

    /// Lists objects of a kind (in a namespace, or all).
    pub async fn list<T: EventingObject>(&self, prefix: &str) -> Result<Vec<T>, ControllerError> {
        let mut out = Vec::new();
        for kv in self.store.list(prefix).await? {
            let mut o: T = decode(&kv.key, &kv.value)?;
            o.meta_mut().resource_version = kv.mod_revision.to_string();
            out.push(o);
        }
        Ok(out)
    }

    /// Deletes an object.
    pub async fn delete<T: EventingObject>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(), ControllerError> {
        let key = T::key(ns, name);
        if self.store.get(&key).await?.is_none() {
            return Err(ControllerError::NotFound {
                kind: T::KIND,
                namespace: ns.to_owned(),
                name: name.to_owned(),
            });
        }
        self.store.txn(Txn::new().delete(&key)).await?;
        info!(kind = T::KIND, namespace = ns, name, "deleted");
        Ok(())
    }

    async fn update_status<T: EventingObject>(
        &self,
        ns: &str,
        name: &str,
        change: impl Fn(&mut T) -> bool,
    ) -> Result<Option<T>, ControllerError> {
        let key = T::key(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let mut o: T = decode(&key, &kv.value)?;
            if !change(&mut o) {
                return Ok(Some(o));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&o));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(Some(o));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("{} `{name}` changed concurrently", T::KIND),
        })
    }

    /// Creates or updates a Broker.
    pub async fn apply_broker(
        &self,
        v: ValidatedBroker,
        dry_run: bool,
    ) -> Result<(ApplyResult, Broker), ControllerError> {
        let meta = v
            .meta
            .object_meta(uuid::Uuid::new_v4().to_string(), &self.controller.now());
        let rv = v.meta.resource_version.clone();
        self.apply_object(Broker::new(meta, &v), rv.as_deref(), dry_run)
            .await
    }

    /// Creates or updates a Trigger.
    pub async fn apply_trigger(
        &self,
        v: ValidatedTrigger,
        dry_run: bool,
    ) -> Result<(ApplyResult, Trigger), ControllerError> {
        let meta = v
            .meta
            .object_meta(uuid::Uuid::new_v4().to_string(), &self.controller.now());
        let rv = v.meta.resource_version.clone();
        self.apply_object(Trigger::new(meta, &v), rv.as_deref(), dry_run)
            .await
    }

    /// Creates or updates a PingSource.
    pub async fn apply_ping_source(
        &self,
        v: ValidatedPingSource,
        dry_run: bool,
    ) -> Result<(ApplyResult, PingSource), ControllerError> {
        let meta = v
            .meta
            .object_meta(uuid::Uuid::new_v4().to_string(), &self.controller.now());
        let rv = v.meta.resource_version.clone();
        self.apply_object(PingSource::new(meta, &v), rv.as_deref(), dry_run)
            .await
    }

    /// Whether the sink `s` of namespace `ns` exists now, and why not.
    async fn sink_exists(&self, ns: &str, s: &SinkRef) -> Result<Option<String>, ControllerError> {
        let missing = |what: &str| {
            Some(format!(
                "{what} `{}` does not exist in namespace `{ns}`; events wait and are retried, then dead-lettered",
                s.name
            ))
        };
        Ok(match s.kind {
            SinkKind::Service => match self.controller.get_service(ns, &s.name).await {
                Ok(_) => None,
                Err(ControllerError::NotFound { .. }) => missing("Service"),
                Err(e) => return Err(e),
            },
            SinkKind::Job => match self.jobs.get(ns, &s.name).await {
                Ok(_) => None,
                Err(ControllerError::NotFound { .. }) => missing("Job"),
                Err(e) => return Err(e),
            },
            SinkKind::Broker => {
                if self.has_broker(ns, &s.name)
                    || self.store.get(&keys::broker(ns, &s.name)).await?.is_some()
                {
                    None
                } else {
                    missing("Broker")
                }
            }
        })
    }

    // --- Reconciling ------------------------------------------------------------------

    fn index_sink(routes: &mut Routes, ns: &str, sink: &SinkRef, key: &EventingKey) {
        for set in routes.by_sink.values_mut() {
            set.remove(key);
        }
        routes
            .by_sink
            .entry((ns.to_owned(), sink.clone()))
            .or_default()
            .insert(key.clone());
    }

    fn unindex(routes: &mut Routes, key: &EventingKey) {
        for set in routes.by_sink.values_mut() {
            set.remove(key);
        }
    }

    async fn reconcile_broker(&self, ns: &str, name: &str) -> Result<Next, ReconcileError> {
        let key = (ns.to_owned(), name.to_owned());
        let broker: Broker = match self.get(ns, name).await {
            Ok(b) => b,
            Err(ControllerError::NotFound { .. }) => {
                self.routes_mut().brokers.remove(&key);
                self.requeue_triggers_of(ns, name).await?;
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let v = revalidate(
            &broker,
            eventing::EVENTING_API_VERSION,
            "Broker",
            eventing::broker_from_document,
        );
        let delivery = v.as_ref().and_then(|v| v.delivery.clone());
        let changed = {
            let mut r = self.routes_mut();
            let old = r.brokers.insert(key.clone(), delivery.clone());
            old.as_ref() != Some(&delivery)
        };
        if changed {
            self.requeue_triggers_of(ns, name).await?;
        }
        let url = self.broker_url(ns, name);
        let dls = delivery
            .as_ref()
            .and_then(|d| d.dead_letter.as_ref())
            .map(|s| self.sink_uri(ns, s));
        let now = self.controller.now();
        self.update_status::<Broker>(ns, name, |b| {
            let before = b.status.clone();
            b.status.observed_generation = b.metadata.generation;
            b.status.address = Some(Addressable { url: url.clone() });
            b.status.dead_letter_sink_uri = dls.clone();
            for c in ["Addressable", "Ready"] {
                set_condition(
                    &mut b.status.conditions,
                    c,
                    ConditionStatus::True,
                    None,
                    None,
                    &now,
                );
            }
            b.status != before
        })
        .await?;
        Ok(Next::Done)
    }

    /// Queues the Triggers of a Broker (its delivery settings are theirs by default).
    async fn requeue_triggers_of(&self, ns: &str, broker: &str) -> Result<(), ControllerError> {
        let triggers: Vec<Trigger> = self.list(&keys::triggers(Some(ns))).await?;
        let mut r = self.routes_mut();
        for t in triggers {
            if t.spec.broker.as_deref() == Some(broker) {
                r.pending
                    .insert(EventingKey::Trigger(ns.to_owned(), t.metadata.name));
            }
        }
        Ok(())
    }

    async fn reconcile_trigger(&self, ns: &str, name: &str) -> Result<Next, ReconcileError> {
        let ekey = EventingKey::Trigger(ns.to_owned(), name.to_owned());
        let subscription = trigger_subscription(ns, name);
        let trigger: Trigger = match self.get(ns, name).await {
            Ok(t) => t,
            Err(ControllerError::NotFound { .. }) => {
                {
                    let mut r = self.routes_mut();
                    for ts in r.triggers.values_mut() {
                        ts.retain(|t| t.subscription != subscription);
                    }
                    r.targets.remove(&subscription);
                    Self::unindex(&mut r, &ekey);
                }
                let (queue, sub) = (self.queue.clone(), subscription.clone());
                let dropped =
                    tokio::task::spawn_blocking(move || queue.drop_subscription(&sub)).await??;
                if dropped > 0 {
                    info!(trigger = %name, namespace = %ns, dropped, "trigger deleted; its pending deliveries were dropped");
                }
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(v) = revalidate(
            &trigger,
            eventing::EVENTING_API_VERSION,
            "Trigger",
            eventing::trigger_from_document,
        ) else {
            warn!(trigger = %name, namespace = %ns, "stored trigger no longer validates; it receives nothing");
            return Ok(Next::Done);
        };
        let broker_key = (ns.to_owned(), v.broker.clone());
        let broker_delivery = self.routes().brokers.get(&broker_key).cloned();
        let broker_exists = broker_delivery.is_some()
            || self
                .store
                .get(&keys::broker(ns, &v.broker))
                .await?
                .is_some();
        let delivery = v
            .delivery
            .clone()
            .or_else(|| broker_delivery.clone().flatten());
        let (policy, dead_letter) = policy(delivery.as_ref());
        let target = Target {
            namespace: ns.to_owned(),
            sink: v.subscriber.clone(),
            policy,
            dead_letter: dead_letter.clone(),
            reply_broker: Some(v.broker.clone()),
        };
        {
            let mut r = self.routes_mut();
            for ts in r.triggers.values_mut() {
                ts.retain(|t| t.subscription != subscription);
            }
            r.triggers
                .entry(broker_key.clone())
                .or_default()
                .push(TriggerRoute {
                    subscription: subscription.clone(),
                    filters: filters(&v),
                });
            r.targets.insert(subscription.clone(), target);
            if let Some(dls) = &dead_letter {
                let (policy, _) = self::policy(None);
                r.targets.insert(
                    dead_letter_subscription(&subscription),
                    Target {
                        namespace: ns.to_owned(),
                        sink: dls.clone(),
                        policy: DeliveryPolicy {
                            dead_letter: false,
                            ..policy
                        },
                        dead_letter: None,
                        reply_broker: None,
                    },
                );
            }
            Self::index_sink(&mut r, ns, &v.subscriber, &ekey);
        }
        self.wake.notify_one();
        let subscriber_missing = self.sink_exists(ns, &v.subscriber).await?;
        let dls_missing = match &dead_letter {
            Some(d) => self.sink_exists(ns, d).await?,
            None => None,
        };
        let subscriber_uri = self.sink_uri(ns, &v.subscriber);
        let dls_uri = dead_letter.as_ref().map(|d| self.sink_uri(ns, d));
        let now = self.controller.now();
        let broker = v.broker.clone();
        self.update_status::<Trigger>(ns, name, |t| {
            let before = t.status.clone();
            t.status.observed_generation = t.metadata.generation;
            t.status.subscriber_uri = Some(subscriber_uri.clone());
            t.status.dead_letter_sink_uri = dls_uri.clone();
            let c = &mut t.status.conditions;
            let (bs, br, bm) = if broker_exists {
                (ConditionStatus::True, None, None)
            } else {
                (
                    ConditionStatus::False,
                    Some("BrokerDoesNotExist"),
                    Some(format!("Broker `{broker}` does not exist in namespace `{ns}`; no event reaches this Trigger until it does")),
                )
            };
            set_condition(c, "BrokerReady", bs, br, bm.clone(), &now);
            let (ss, sr, sm) = match &subscriber_missing {
                None => (ConditionStatus::True, None, None),
                Some(why) => (ConditionStatus::False, Some("SubscriberNotFound"), Some(why.clone())),
            };
            set_condition(c, eventing::stored::CONDITION_SUBSCRIBER_RESOLVED, ss, sr, sm.clone(), &now);
            if dead_letter.is_some() {
                let (ds, dr, dm) = match &dls_missing {
                    None => (ConditionStatus::True, None, None),
                    Some(why) => (ConditionStatus::False, Some("DeadLetterSinkNotFound"), Some(why.clone())),
                };
                set_condition(c, eventing::stored::CONDITION_DEAD_LETTER_SINK_RESOLVED, ds, dr, dm, &now);
            }
            let (rs, rr, rm) = match (bm, sm) {
                (None, None) => (ConditionStatus::True, None, None),
                (Some(m), _) => (ConditionStatus::False, Some("BrokerDoesNotExist"), Some(m)),
                (None, Some(m)) => (ConditionStatus::False, Some("SubscriberNotFound"), Some(m)),
            };
            set_condition(c, "Ready", rs, rr, rm, &now);
            t.status != before
        })
        .await?;
        Ok(Next::Done)
    }

    async fn reconcile_ping(&self, ns: &str, name: &str) -> Result<Next, ReconcileError> {
        let ekey = EventingKey::Ping(ns.to_owned(), name.to_owned());
        let subscription = ping_subscription(ns, name);
        let ping: PingSource = match self.get(ns, name).await {
            Ok(p) => p,
            Err(ControllerError::NotFound { .. }) => {
                {
                    let mut r = self.routes_mut();
                    r.targets.remove(&subscription);
                    Self::unindex(&mut r, &ekey);
                }
                let (queue, sub) = (self.queue.clone(), subscription.clone());
                tokio::task::spawn_blocking(move || queue.drop_subscription(&sub)).await??;
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(v) = revalidate(
            &ping,
            eventing::SOURCES_API_VERSION,
            "PingSource",
            eventing::ping_source_from_document,
        ) else {
            warn!(pingsource = %name, namespace = %ns, "stored PingSource no longer validates; it does not fire");
            return Ok(Next::Done);
        };
        // PingSource has no delivery spec (Knative's has none either): skiff's default
        // retries, no dead-letter sink.
        let (policy, _) = policy(None);
        {
            let mut r = self.routes_mut();
            r.targets.insert(
                subscription.clone(),
                Target {
                    namespace: ns.to_owned(),
                    sink: v.sink.clone(),
                    policy,
                    dead_letter: None,
                    reply_broker: None,
                },
            );
            Self::index_sink(&mut r, ns, &v.sink, &ekey);
        }
        let schedule = match skiff_cron::Schedule::parse(&v.schedule, v.timezone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                warn!(pingsource = %name, namespace = %ns, error = %e, "the schedule cannot be read; it does not fire");
                return Ok(Next::Done);
            }
        };
        let now = self.jobs.now();
        let now_text = self.controller.now();
        // A new spec counts from now: its earlier fire times are not missed runs.
        let fresh = ping.status.observed_generation != ping.metadata.generation;
        let since = if fresh {
            now
        } else {
            ping.metadata.creation_timestamp.parse().unwrap_or(now)
        };
        let last = if fresh {
            None
        } else {
            ping.status
                .last_schedule_time
                .as_deref()
                .and_then(|t| t.parse().ok())
        };
        let decision = skiff_cron::decide(
            &schedule,
            last,
            since,
            now,
            None,
            skiff_cron::ConcurrencyPolicy::Allow,
            false,
        );
        let mut fired: Option<(jiff::Timestamp, u64)> = None;
        if let skiff_cron::Decision::Run {
            scheduled, missed, ..
        } = decision
        {
            let mut event = CloudEvent::new(
                format!("{}-{}", ping.metadata.uid, scheduled.as_second()),
                format!("/apis/v1/namespaces/{ns}/pingsources/{name}"),
                "dev.knative.sources.ping",
            );
            event.time = Some(scheduled.to_string());
            if let Some(data) = &v.data {
                event = event.with_data(
                    v.content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".into()),
                    data.clone(),
                );
            }
            event.extensions = v.extensions.clone();
            // Stored before the status moves on: a crash between the two fires the same
            // time again, with the same id (at least once, never lost).
            self.enqueue(
                &[(event, vec![subscription.clone()])],
                &format!("pingsource/{name}"),
                ns,
            )
            .await?;
            info!(pingsource = %name, namespace = %ns, scheduled = %scheduled, missed, "ping fired");
            fired = Some((scheduled, missed));
        }
        let sink_uri = self.sink_uri(ns, &v.sink);
        let sink_missing = self.sink_exists(ns, &v.sink).await?;
        let next = schedule.next_after(now);
        let next_text = next.map(|n| n.to_string());
        self.update_status::<PingSource>(ns, name, |p| {
            let before = p.status.clone();
            if p.status.observed_generation != p.metadata.generation {
                p.status.last_schedule_time = Some(now_text.clone());
            }
            p.status.observed_generation = p.metadata.generation;
            p.status.sink_uri = Some(sink_uri.clone());
            p.status.next_schedule_time = next_text.clone();
            if let Some((at, missed)) = fired {
                p.status.last_schedule_time = Some(at.to_string());
                if missed > 0 {
                    p.status.missed_runs = Some(p.status.missed_runs.unwrap_or(0) + missed);
                }
            }
            let (s, r, m) = match &sink_missing {
                None => (ConditionStatus::True, None, None),
                Some(why) => (
                    ConditionStatus::False,
                    Some("SinkNotFound"),
                    Some(why.clone()),
                ),
            };
            set_condition(
                &mut p.status.conditions,
                "SinkProvided",
                s,
                r,
                m.clone(),
                &now_text,
            );
            set_condition(&mut p.status.conditions, "Ready", s, r, m, &now_text);
            p.status != before
        })
        .await?;
        Ok(Next::RequeueAfter(crate::schedules::wait_until(now, next)))
    }

    /// Stores events, each for its subscriptions, in one transaction; wakes the dispatcher.
    pub async fn enqueue(
        &self,
        events: &[(CloudEvent, Vec<String>)],
        source: &str,
        ns: &str,
    ) -> Result<(), ReconcileError> {
        let items: Vec<(Vec<u8>, Vec<String>)> = events
            .iter()
            .map(|(e, subs)| (encode(e), subs.clone()))
            .collect();
        let queue = self.queue.clone();
        let source_key = format!("{ns}/{source}");
        let now = jiff::Timestamp::now();
        // Counted where the commit happens: the blocking task runs to the end even when this
        // future is dropped (a broker client that disconnects while its events are being
        // stored), and the events it stored are delivered, so they must count as received.
        let (metrics, count_ns, count_source) =
            (self.metrics.clone(), ns.to_owned(), source.to_owned());
        let n = events.len() as u64;
        tokio::task::spawn_blocking(move || {
            let subs: Vec<Vec<&str>> = items
                .iter()
                .map(|(_, s)| s.iter().map(String::as_str).collect())
                .collect();
            let new: Vec<skiff_queue::NewEvent<'_>> = items
                .iter()
                .zip(&subs)
                .map(|((payload, _), s)| skiff_queue::NewEvent {
                    payload,
                    source_key: Some(&source_key),
                    subscriptions: s,
                })
                .collect();
            let stored = queue.enqueue_events(&new, now)?;
            // A dead letter's copy was counted when its event was received.
            if count_source != "deadletter" {
                metrics.received(&count_ns, &count_source, n);
            }
            Ok::<_, skiff_queue::QueueError>(stored)
        })
        .await??;
        // The subscriptions' workers, if they run; else the dispatcher, which starts them.
        let subs: HashSet<&String> = events.iter().flat_map(|(_, s)| s).collect();
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing = false;
        for s in subs {
            match workers.get(s) {
                Some(w) => w.notify_one(),
                None => missing = true,
            }
        }
        if missing {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Takes the keys the routes asked to look at again.
    fn take_pending(&self) -> Vec<EventingKey> {
        self.routes_mut().pending.drain().collect()
    }
}

/// The eventing reconciler: Brokers, Triggers and PingSources.
pub struct EventingReconciler {
    /// Eventing.
    pub eventing: Arc<Eventing>,
    /// Its own queue (Triggers queued again when their Broker changes).
    pub handle: std::sync::OnceLock<crate::reconciler::Handle<EventingKey>>,
}

#[async_trait]
impl Reconciler for EventingReconciler {
    type Key = EventingKey;

    fn name(&self) -> &'static str {
        "eventing"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[
            keys::BROKERS,
            keys::TRIGGERS,
            keys::PINGSOURCES,
            keys::SERVICES,
            keys::JOBS,
        ]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<EventingKey> {
        let own = |(ns, n): (&str, &str)| (ns.to_owned(), n.to_owned());
        if let Some(k) = keys::parse_broker(store_key).map(own) {
            return vec![EventingKey::Broker(k.0, k.1)];
        }
        if let Some(k) = keys::parse_trigger(store_key).map(own) {
            return vec![EventingKey::Trigger(k.0, k.1)];
        }
        if let Some(k) = keys::parse_pingsource(store_key).map(own) {
            return vec![EventingKey::Ping(k.0, k.1)];
        }
        let sink = if let Some((ns, n)) = keys::parse_service(store_key) {
            Some((
                ns.to_owned(),
                SinkRef {
                    kind: SinkKind::Service,
                    name: n.to_owned(),
                },
            ))
        } else {
            keys::parse_job(store_key).map(|(ns, n)| {
                (
                    ns.to_owned(),
                    SinkRef {
                        kind: SinkKind::Job,
                        name: n.to_owned(),
                    },
                )
            })
        };
        match sink {
            Some(s) => self
                .eventing
                .routes()
                .by_sink
                .get(&s)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Result<Vec<EventingKey>, ReconcileError> {
        let e = &self.eventing;
        let mut out = Vec::new();
        // Brokers first: Triggers read their delivery settings.
        for b in e.list::<Broker>(keys::BROKERS).await? {
            out.push(EventingKey::Broker(b.metadata.namespace, b.metadata.name));
        }
        for t in e.list::<Trigger>(keys::TRIGGERS).await? {
            out.push(EventingKey::Trigger(t.metadata.namespace, t.metadata.name));
        }
        for p in e.list::<PingSource>(keys::PINGSOURCES).await? {
            out.push(EventingKey::Ping(p.metadata.namespace, p.metadata.name));
        }
        e.loading(&out);
        Ok(out)
    }

    async fn reconcile(&self, key: &EventingKey) -> Result<Next, ReconcileError> {
        let e = &self.eventing;
        let next = match key {
            EventingKey::Broker(ns, n) => e.reconcile_broker(ns, n).await?,
            EventingKey::Trigger(ns, n) => e.reconcile_trigger(ns, n).await?,
            EventingKey::Ping(ns, n) => e.reconcile_ping(ns, n).await?,
        };
        e.loaded_one(key);
        if let Some(h) = self.handle.get() {
            for k in e.take_pending() {
                h.enqueue(k);
            }
        }
        Ok(next)
    }

    fn workers(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_namespace() {
        assert_eq!(subscription_namespace("trigger/default/t"), "default");
        assert_eq!(subscription_namespace("deadletter/trigger/ns1/t"), "ns1");
        assert_eq!(subscription_namespace("ping/p2/x"), "p2");
    }

    #[test]
    fn the_trigger_s_delivery_is_read_with_skiff_s_defaults() {
        let (p, dls) = policy(None);
        assert_eq!(p.retry, DEFAULT_RETRY);
        assert_eq!(p.backoff_delay, DEFAULT_BACKOFF);
        assert!(!p.dead_letter);
        assert!(dls.is_none());
        let d = Delivery {
            retry: Some(2),
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay: Some(Duration::from_millis(200)),
            dead_letter: Some(SinkRef {
                kind: SinkKind::Service,
                name: "dls".into(),
            }),
            timeout: None,
            retry_after_max: None,
        };
        let (p, dls) = policy(Some(&d));
        assert_eq!(p.retry, 2);
        assert_eq!(p.backoff_policy, skiff_events::BackoffPolicy::Linear);
        assert!(p.dead_letter);
        assert_eq!(dls.map(|d| d.name), Some("dls".to_owned()));
    }
}
