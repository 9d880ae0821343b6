//! The Service controller: applies manifests to the store, stamps revisions, keeps status.
//!
//! # Design
//! Every write is one store transaction guarded by the `mod_revision` of each key it read, so
//! two concurrent writers never silently overwrite each other. When the caller pinned a
//! `metadata.resourceVersion`, a conflict is the caller's (409); otherwise the controller
//! re-reads and recomputes, because "apply this manifest" is still well defined on the newer
//! state. Status is computed in the same transaction as the change that causes it, so a
//! reader never sees a Service whose status describes an older spec.
//!
//! Keys (etcd-style, one JSON value each):
//! - `/registry/services/<namespace>/<name>`: [`StoredService`]
//! - `/registry/revisions/<namespace>/<name>`: [`Revision`]

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff_api::manifest::{self, Document};
use skiff_api::object::{
    DeleteResponse, LABEL_CONFIGURATION, LABEL_CONFIGURATION_GENERATION, LABEL_SERVICE,
    LABEL_SERVICE_UID, ObjectMeta, Revision, Service,
};
use skiff_api::problems::{FieldPath, ProblemKind, Problems};
use skiff_api::types::{SERVING_API_VERSION, ServiceSpec};
use skiff_api::validate::ValidatedService;
use skiff_api::{Problem, defaults};
use skiff_store::{KeyValue, Store, StoreError, Txn, TxnOutcome, keys};
use tracing::{debug, info, warn};

use crate::status::{self, StatusContext};

/// How many times a write is recomputed after losing a race before giving up with 409.
const MAX_ATTEMPTS: usize = 16;

/// What the store keeps for a Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredService {
    /// The Service object (its `resourceVersion` is the key's `mod_revision`, not stored).
    pub service: Service,
    /// How many revisions the template has produced (Knative's Configuration generation).
    pub configuration_generation: i64,
}

/// Why a controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The manifest breaks rules; every problem is listed.
    #[error("the manifest is invalid")]
    Invalid {
        /// The problems, with paths.
        problems: Vec<Problem>,
    },
    /// The request itself is malformed.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// The object does not exist.
    #[error("{kind} `{name}` not found in namespace `{namespace}`")]
    NotFound {
        /// `service` or `revision`.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// The object changed since it was read, or a name is taken.
    #[error("{message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// The state store failed.
    #[error("state store failed")]
    Store(#[from] StoreError),
    /// A stored value could not be decoded.
    #[error("stored value at `{key}` is unreadable")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    /// The Service was created.
    Created,
    /// The Service changed.
    Configured,
    /// The manifest matched what was stored; nothing was written.
    Unchanged,
}

impl ApplyResult {
    /// `created`, `configured` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        }
    }
}

/// The outcome of an apply.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// The Service as stored (or as it would be, for a dry run).
    pub service: Service,
    /// What happened.
    pub result: ApplyResult,
    /// The revision stamped by this apply, if any.
    pub created_revision: Option<String>,
    /// Settings of the manifest that skiff accepts but that change nothing here.
    pub warnings: Vec<String>,
}

/// Whether an apply may create, replace, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create, or replace what exists (PUT).
    CreateOrReplace,
    /// Create only; an existing Service is a conflict (POST).
    CreateOnly,
}

/// A source of wall-clock time for timestamps (injected so tests can fix it).
pub trait Clock: Send + Sync + 'static {
    /// Now, as RFC 3339 with whole seconds, as Kubernetes writes timestamps.
    fn now_rfc3339(&self) -> String;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_rfc3339(&self) -> String {
        let now = jiff::Timestamp::now();
        jiff::Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string()
    }
}

/// The Service controller.
#[derive(Clone)]
pub struct Controller {
    store: Arc<dyn Store>,
    domain: String,
    ingress_port: u16,
    clock: Arc<dyn Clock>,
}

/// Identifies a revision: (namespace, name).
pub type RevisionKey = (String, String);

/// The (namespace, name) of a revision's store key.
pub fn parse_revision_key(key: &str) -> Option<RevisionKey> {
    let (ns, name) = keys::parse_revision(key)?;
    Some((ns.to_owned(), name.to_owned()))
}

fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, ControllerError> {
    serde_json::from_slice(&kv.value).map_err(|source| ControllerError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("API objects always serialize")
}

fn invalid_at(doc: &Document, path: &str, kind: ProblemKind, message: String) -> ControllerError {
    let mut problems = Problems::new();
    problems.push(&FieldPath::parse(path), kind, message);
    ControllerError::Invalid {
        problems: doc.place(problems, false),
    }
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..skiff_api::validate::GENERATED_SUFFIX_LEN)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

impl Controller {
    /// A controller over `store` for services under `domain`, reached on `ingress_port`.
    pub fn new(
        store: Arc<dyn Store>,
        domain: String,
        ingress_port: u16,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Controller {
            store,
            domain,
            ingress_port,
            clock,
        }
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Now, as the controller's clock says.
    pub fn now(&self) -> String {
        self.clock.now_rfc3339()
    }

    /// Changes a revision's status with `change` (which returns whether it changed anything),
    /// retrying on concurrent writes; then recomputes its Service's status when `refresh`.
    /// Returns `Ok(None)` when the revision no longer exists.
    pub async fn update_revision(
        &self,
        ns: &str,
        name: &str,
        refresh: bool,
        change: impl Fn(&mut Revision) -> bool,
    ) -> Result<Option<Revision>, ControllerError> {
        let key = keys::revision(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let mut r: Revision = decode(&kv)?;
            if !change(&mut r) {
                return Ok(Some(r));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&r));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                if refresh && let Some(service) = r.service_name() {
                    self.refresh_service(ns, service).await?;
                }
                return Ok(Some(r));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("revision `{name}` changed concurrently {MAX_ATTEMPTS} times"),
        })
    }

    /// Recomputes and stores a Service's status from its revisions.
    pub async fn refresh_service(&self, ns: &str, name: &str) -> Result<(), ControllerError> {
        let key = keys::service(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(());
            };
            let mut stored: StoredService = decode(&kv)?;
            let revisions = self.read_revisions(ns, Some(name)).await?;
            let refs: Vec<&Revision> = revisions.iter().map(|(r, _)| r).collect();
            let status = status::service_status(&stored.service, &refs, &self.status_context());
            if status == stored.service.status {
                return Ok(());
            }
            stored.service.status = status;
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&stored));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(());
            }
        }
        Err(ControllerError::Conflict {
            message: format!("service `{name}` changed concurrently {MAX_ATTEMPTS} times"),
        })
    }

    fn status_context(&self) -> StatusContext {
        StatusContext {
            domain: self.domain.clone(),
            ingress_port: self.ingress_port,
            now: self.clock.now_rfc3339(),
        }
    }

    async fn read_service(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<(StoredService, i64)>, ControllerError> {
        match self.store.get(&keys::service(ns, name)).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    async fn read_revisions(
        &self,
        ns: &str,
        service: Option<&str>,
    ) -> Result<Vec<(Revision, i64)>, ControllerError> {
        let prefix = match service {
            Some(s) => keys::revisions_of_service(ns, s),
            None => keys::revisions(Some(ns)),
        };
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            let mut r: Revision = decode(&kv)?;
            if service.is_none_or(|s| r.service_name() == Some(s)) {
                r.metadata.resource_version = kv.mod_revision.to_string();
                out.push((r, kv.mod_revision));
            }
        }
        Ok(out)
    }

    /// Applies a manifest document to namespace `ns`. `name` is the name in the URL (PUT), or
    /// `None` for a create that may use `generateName` (POST).
    pub async fn apply(
        &self,
        ns: &str,
        name: Option<&str>,
        doc: &Document,
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ControllerError> {
        let valid = manifest::service_from_document(doc).map_err(|p| ControllerError::Invalid {
            problems: doc.place(p, false),
        })?;
        if let Some(manifest_ns) = &valid.manifest.metadata.namespace
            && manifest_ns != ns
        {
            return Err(invalid_at(
                doc,
                "metadata.namespace",
                ProblemKind::Invalid,
                format!("`{manifest_ns}` does not match the namespace of the request, `{ns}`"),
            ));
        }
        let fixed_name = match (name, valid.name()) {
            (Some(url), Some(m)) if url != m => {
                return Err(invalid_at(
                    doc,
                    "metadata.name",
                    ProblemKind::Invalid,
                    format!("`{m}` does not match the name in the request path, `{url}`"),
                ));
            }
            (Some(url), None) => {
                if let Err(e) = skiff_api::names::check_dns1035_label(url) {
                    return Err(ControllerError::BadRequest {
                        message: format!("invalid service name in the request path: {e}"),
                    });
                }
                Some(url.to_owned())
            }
            (_, Some(m)) => Some(m.to_owned()),
            (None, None) => None,
        };
        for attempt in 0..MAX_ATTEMPTS {
            let (service_name, generated) = match &fixed_name {
                Some(n) => (n.clone(), false),
                None => {
                    let prefix = valid
                        .manifest
                        .metadata
                        .generate_name
                        .clone()
                        .unwrap_or_default();
                    (generated_name(&prefix), true)
                }
            };
            match self
                .try_apply(ns, &service_name, generated, doc, &valid, mode, dry_run)
                .await?
            {
                Some(outcome) => return Ok(outcome),
                None => {
                    debug!(namespace = ns, service = %service_name, attempt, "apply lost a race; retrying");
                }
            }
        }
        Err(ControllerError::Conflict {
            message: format!(
                "service changed concurrently {MAX_ATTEMPTS} times while applying; try again"
            ),
        })
    }

    /// One attempt; `Ok(None)` means a concurrent write won and the caller should retry.
    #[allow(clippy::too_many_arguments)]
    async fn try_apply(
        &self,
        ns: &str,
        name: &str,
        generated: bool,
        doc: &Document,
        valid: &ValidatedService,
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<Option<ApplyOutcome>, ControllerError> {
        let now = self.clock.now_rfc3339();
        let current = self.read_service(ns, name).await?;
        let pinned = valid
            .manifest
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse::<i64>().ok());
        match (&current, pinned) {
            (Some(_), _) if generated => return Ok(None),
            (Some(_), _) if mode == ApplyMode::CreateOnly => {
                return Err(ControllerError::Conflict {
                    message: format!("service `{name}` already exists in namespace `{ns}`"),
                });
            }
            (None, Some(rv)) => {
                return Err(ControllerError::Conflict {
                    message: format!(
                        "service `{name}` does not exist, but the manifest expects resourceVersion {rv}; drop metadata.resourceVersion to create it"
                    ),
                });
            }
            (Some((_, have)), Some(rv)) if *have != rv => {
                return Err(ControllerError::Conflict {
                    message: format!(
                        "service `{name}` changed since resourceVersion {rv} (now {have}); get it again, reapply your change, and retry"
                    ),
                });
            }
            _ => {}
        }
        let revisions = self.read_revisions(ns, Some(name)).await?;
        let spec: ServiceSpec = valid.manifest.spec.clone().unwrap_or_default();
        let meta = &valid.manifest.metadata;
        let (mut stored, expected_rev, result) = match &current {
            None => (
                StoredService {
                    service: Service {
                        api_version: SERVING_API_VERSION.to_owned(),
                        kind: "Service".to_owned(),
                        metadata: ObjectMeta {
                            name: name.to_owned(),
                            namespace: ns.to_owned(),
                            generate_name: if generated {
                                meta.generate_name.clone()
                            } else {
                                None
                            },
                            uid: uuid::Uuid::new_v4().to_string(),
                            generation: 1,
                            resource_version: String::new(),
                            creation_timestamp: now.clone(),
                            labels: meta.labels.clone(),
                            annotations: meta.annotations.clone(),
                        },
                        spec: spec.clone(),
                        status: Default::default(),
                    },
                    configuration_generation: 0,
                },
                0,
                ApplyResult::Created,
            ),
            Some((old, rev)) => {
                let mut s = old.clone();
                if s.service.spec != spec {
                    s.service.metadata.generation += 1;
                }
                s.service.spec = spec.clone();
                s.service.metadata.labels = meta.labels.clone();
                s.service.metadata.annotations = meta.annotations.clone();
                (s, *rev, ApplyResult::Configured)
            }
        };

        // A new revision whenever the template changes (or on creation).
        let template_changed = match &current {
            None => true,
            Some((old, _)) => old.service.spec.template != spec.template,
        };
        let mut new_revision: Option<Revision> = None;
        if template_changed {
            let template = valid.template();
            let config_gen = stored.configuration_generation + 1;
            let rev_name = template
                .metadata
                .name
                .clone()
                .unwrap_or_else(|| format!("{name}-{config_gen:05}"));
            if let Some(existing) = self.store.get(&keys::revision(ns, &rev_name)).await? {
                // A concurrent apply may have stamped this very revision since we read the
                // Service: then recompute from the newer state instead of refusing.
                let now_rev = self
                    .store
                    .get(&keys::service(ns, name))
                    .await?
                    .map_or(0, |kv| kv.mod_revision);
                if now_rev != expected_rev {
                    return Ok(None);
                }
                let existing: Revision = decode(&existing)?;
                let message = if template.metadata.name.is_some() {
                    format!(
                        "revision `{rev_name}` already exists{}; give every template change a new spec.template.metadata.name",
                        match existing.service_name() {
                            Some(s) if s != name => format!(" (it belongs to service `{s}`)"),
                            _ => String::new(),
                        }
                    )
                } else {
                    format!(
                        "revision `{rev_name}` already exists; set spec.template.metadata.name to another name"
                    )
                };
                return Err(invalid_at(
                    doc,
                    "spec.template.metadata.name",
                    ProblemKind::Conflict,
                    message,
                ));
            }
            let mut rev_spec = template.spec.clone().unwrap_or_default();
            defaults::apply(&mut rev_spec);
            let mut labels = template.metadata.labels.clone();
            labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
            labels.insert(LABEL_CONFIGURATION.to_owned(), name.to_owned());
            labels.insert(
                LABEL_CONFIGURATION_GENERATION.to_owned(),
                config_gen.to_string(),
            );
            labels.insert(
                LABEL_SERVICE_UID.to_owned(),
                stored.service.metadata.uid.clone(),
            );
            new_revision = Some(Revision {
                api_version: SERVING_API_VERSION.to_owned(),
                kind: "Revision".to_owned(),
                metadata: ObjectMeta {
                    name: rev_name,
                    namespace: ns.to_owned(),
                    generate_name: None,
                    uid: uuid::Uuid::new_v4().to_string(),
                    generation: 1,
                    resource_version: String::new(),
                    creation_timestamp: now.clone(),
                    labels,
                    annotations: template.metadata.annotations.clone(),
                },
                spec: rev_spec,
                autoscaling: valid.autoscaling.clone(),
                status: status::initial_revision_status(&now),
            });
            stored.configuration_generation = config_gen;
        }

        // Pinned traffic targets must name revisions of this Service.
        let known: BTreeMap<&str, ()> = revisions
            .iter()
            .map(|(r, _)| (r.metadata.name.as_str(), ()))
            .chain(new_revision.iter().map(|r| (r.metadata.name.as_str(), ())))
            .collect();
        let mut traffic_problems = Problems::new();
        for (i, t) in spec.traffic.iter().flatten().enumerate() {
            if let Some(rev) = &t.revision_name
                && !known.contains_key(rev.as_str())
            {
                let have: Vec<&str> = known.keys().copied().collect();
                traffic_problems.push(
                    &FieldPath::parse("spec.traffic")
                        .index(i)
                        .key("revisionName"),
                    ProblemKind::Conflict,
                    format!(
                        "service `{name}` has no revision `{rev}` (it has: {})",
                        if have.is_empty() {
                            "none".to_owned()
                        } else {
                            have.join(", ")
                        }
                    ),
                );
            }
        }
        if !traffic_problems.is_empty() {
            return Err(ControllerError::Invalid {
                problems: doc.place(traffic_problems, false),
            });
        }

        let all_revisions: Vec<&Revision> = revisions
            .iter()
            .map(|(r, _)| r)
            .chain(new_revision.iter())
            .collect();
        stored.service.status =
            status::service_status(&stored.service, &all_revisions, &self.status_context());

        let result = match (&current, result) {
            (Some((old, _)), ApplyResult::Configured)
                if old.service.spec == stored.service.spec
                    && old.service.metadata == stored.service.metadata
                    && old.service.status == stored.service.status =>
            {
                ApplyResult::Unchanged
            }
            (_, r) => r,
        };
        let created_revision = new_revision.as_ref().map(|r| r.metadata.name.clone());
        if dry_run || result == ApplyResult::Unchanged {
            let mut service = stored.service;
            service.metadata.resource_version = if expected_rev > 0 {
                expected_rev.to_string()
            } else {
                String::new()
            };
            return Ok(Some(ApplyOutcome {
                service,
                result,
                created_revision,
                warnings: valid.warnings(),
            }));
        }

        let key = keys::service(ns, name);
        let mut txn = Txn::new()
            .when_mod_revision(&key, expected_rev)
            .put(&key, encode(&stored));
        if let Some(r) = &new_revision {
            let rkey = keys::revision(ns, &r.metadata.name);
            txn = txn.when_mod_revision(&rkey, 0).put(rkey, encode(r));
        }
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                info!(
                    namespace = ns,
                    service = name,
                    result = result.as_str(),
                    revision = created_revision.as_deref().unwrap_or("-"),
                    store_revision = revision,
                    "service applied"
                );
                let mut service = stored.service;
                service.metadata.resource_version = revision.to_string();
                Ok(Some(ApplyOutcome {
                    service,
                    result,
                    created_revision,
                    warnings: valid.warnings(),
                }))
            }
            TxnOutcome::Conflict {
                key: k,
                expected,
                actual,
            } => {
                if pinned.is_some() && k == key {
                    return Err(ControllerError::Conflict {
                        message: format!(
                            "service `{name}` changed since resourceVersion {expected} (now {actual}); get it again, reapply your change, and retry"
                        ),
                    });
                }
                Ok(None)
            }
        }
    }

    /// Reads one Service.
    pub async fn get_service(&self, ns: &str, name: &str) -> Result<Service, ControllerError> {
        match self.read_service(ns, name).await? {
            Some((stored, rev)) => {
                let mut s = stored.service;
                s.metadata.resource_version = rev.to_string();
                Ok(s)
            }
            None => Err(ControllerError::NotFound {
                kind: "service",
                namespace: ns.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// Lists Services of one namespace, or of all when `ns` is `None`, ordered by namespace
    /// and name.
    pub async fn list_services(&self, ns: Option<&str>) -> Result<Vec<Service>, ControllerError> {
        let mut out = Vec::new();
        for kv in self.store.list(&keys::services(ns)).await? {
            let stored: StoredService = decode(&kv)?;
            let mut s = stored.service;
            s.metadata.resource_version = kv.mod_revision.to_string();
            out.push(s);
        }
        Ok(out)
    }

    /// Lists revisions of one namespace (or all), optionally of one Service only.
    pub async fn list_revisions(
        &self,
        ns: Option<&str>,
        service: Option<&str>,
    ) -> Result<Vec<Revision>, ControllerError> {
        match ns {
            Some(ns) => Ok(self
                .read_revisions(ns, service)
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect()),
            None => {
                let mut out = Vec::new();
                for kv in self.store.list(keys::REVISIONS).await? {
                    let mut r: Revision = decode(&kv)?;
                    if service.is_none_or(|s| r.service_name() == Some(s)) {
                        r.metadata.resource_version = kv.mod_revision.to_string();
                        out.push(r);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The keys of every stored revision.
    pub async fn revision_keys(&self) -> Result<Vec<RevisionKey>, ControllerError> {
        Ok(self
            .store
            .list(&keys::revisions(None))
            .await?
            .kvs
            .iter()
            .filter_map(|kv| parse_revision_key(&kv.key))
            .collect())
    }

    /// The keys of one Service's revisions.
    pub async fn revision_keys_of(
        &self,
        ns: &str,
        service: &str,
    ) -> Result<Vec<RevisionKey>, ControllerError> {
        Ok(self
            .read_revisions(ns, Some(service))
            .await?
            .into_iter()
            .map(|(r, _)| (ns.to_owned(), r.metadata.name))
            .collect())
    }

    /// Reads one revision.
    pub async fn get_revision(&self, ns: &str, name: &str) -> Result<Revision, ControllerError> {
        match self.store.get(&keys::revision(ns, name)).await? {
            Some(kv) => {
                let mut r: Revision = decode(&kv)?;
                r.metadata.resource_version = kv.mod_revision.to_string();
                Ok(r)
            }
            None => Err(ControllerError::NotFound {
                kind: "revision",
                namespace: ns.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// Deletes a Service, its revisions and its scale override, atomically; returns what was
    /// deleted and the store revision of the deletion. With `resource_version`, only if the
    /// Service is still at that version.
    pub async fn delete_service(
        &self,
        ns: &str,
        name: &str,
        resource_version: Option<i64>,
        dry_run: bool,
    ) -> Result<(DeleteResponse, i64), ControllerError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((_, rev)) = self.read_service(ns, name).await? else {
                return Err(ControllerError::NotFound {
                    kind: "service",
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                });
            };
            if let Some(want) = resource_version
                && want != rev
            {
                return Err(ControllerError::Conflict {
                    message: format!(
                        "service `{name}` changed since resourceVersion {want} (now {rev})"
                    ),
                });
            }
            let revisions = self.read_revisions(ns, Some(name)).await?;
            let response = DeleteResponse {
                name: name.to_owned(),
                namespace: ns.to_owned(),
                deleted_revisions: revisions
                    .iter()
                    .map(|(r, _)| r.metadata.name.clone())
                    .collect(),
            };
            if dry_run {
                return Ok((response, rev));
            }
            let key = keys::service(ns, name);
            // The manual override goes with its Service.
            let mut txn = Txn::new()
                .when_mod_revision(&key, rev)
                .delete(&key)
                .delete(keys::scale(ns, name));
            for (r, r_rev) in &revisions {
                let rkey = keys::revision(ns, &r.metadata.name);
                txn = txn.when_mod_revision(&rkey, *r_rev).delete(rkey);
            }
            match self.store.txn(txn).await? {
                TxnOutcome::Committed { revision } => {
                    info!(
                        namespace = ns,
                        service = name,
                        revisions = response.deleted_revisions.len(),
                        "service deleted"
                    );
                    return Ok((response, revision));
                }
                TxnOutcome::Conflict { .. } => continue,
            }
        }
        Err(ControllerError::Conflict {
            message: format!("service `{name}` changed concurrently while deleting; try again"),
        })
    }

    /// Recomputes the status of every Service (at start: the domain or port may have changed)
    /// and writes those that differ. Returns how many were updated.
    pub async fn reconcile_all(&self) -> Result<usize, ControllerError> {
        let mut updated = 0;
        for kv in self.store.list(keys::SERVICES).await? {
            let mut stored: StoredService = match decode(&kv) {
                Ok(s) => s,
                Err(e) => {
                    warn!(key = %kv.key, error = %skiff_telemetry::ErrorChain(&e), "skipping unreadable service");
                    continue;
                }
            };
            let ns = stored.service.metadata.namespace.clone();
            let name = stored.service.metadata.name.clone();
            let revisions = self.read_revisions(&ns, Some(&name)).await?;
            let refs: Vec<&Revision> = revisions.iter().map(|(r, _)| r).collect();
            let status = status::service_status(&stored.service, &refs, &self.status_context());
            if status != stored.service.status {
                stored.service.status = status;
                let txn = Txn::new()
                    .when_mod_revision(&kv.key, kv.mod_revision)
                    .put(&kv.key, encode(&stored));
                if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                    updated += 1;
                }
            }
        }
        Ok(updated)
    }
}
