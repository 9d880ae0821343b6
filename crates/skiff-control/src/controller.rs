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
    /// The secret store's key could not be used.
    #[error("secret store")]
    Secret(#[from] crate::secrets::SecretError),
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
    default_rollout: Option<skiff_api::rollout::RolloutPolicy>,
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
            default_rollout: None,
        }
    }

    /// The same controller, with the daemon's rollout policy for revisions that set none.
    pub fn with_default_rollout(
        mut self,
        policy: Option<skiff_api::rollout::RolloutPolicy>,
    ) -> Self {
        self.default_rollout = policy;
        self
    }

    /// The daemon's rollout policy.
    pub fn default_rollout(&self) -> Option<&skiff_api::rollout::RolloutPolicy> {
        self.default_rollout.as_ref()
    }

    /// Changes a Service's rollout status with `change` (given the Service, its revisions
    /// and the status context; it returns whether it changed anything), and recomputes the
    /// Service's status in the same write, retrying on concurrent writes. Returns the Service
    /// as stored.
    pub async fn update_rollout(
        &self,
        ns: &str,
        name: &str,
        change: impl Fn(
            &mut skiff_api::rollout::RolloutStatus,
            &Service,
            &[&Revision],
            &StatusContext,
        ) -> Result<bool, ControllerError>,
    ) -> Result<Service, ControllerError> {
        let key = keys::service(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ControllerError::NotFound {
                    kind: "service",
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                });
            };
            let mut stored: StoredService = decode(&kv)?;
            let revisions = self.read_revisions(ns, Some(name)).await?;
            let refs: Vec<&Revision> = revisions.iter().map(|(r, _)| r).collect();
            let ctx = self.status_context();
            let mut rollout = stored.service.status.rollout.clone().unwrap_or_default();
            if !change(&mut rollout, &stored.service, &refs, &ctx)? {
                stored.service.metadata.resource_version = kv.mod_revision.to_string();
                return Ok(stored.service);
            }
            stored.service.status.rollout = Some(rollout);
            stored.service.status = status::service_status(&stored.service, &refs, &ctx);
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&stored));
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                stored.service.metadata.resource_version = revision.to_string();
                return Ok(stored.service);
            }
        }
        Err(ControllerError::Conflict {
            message: format!("service `{name}` changed concurrently {MAX_ATTEMPTS} times"),
        })
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
            default_rollout: self.default_rollout.clone(),
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
    ///
    /// Reads the Service and its revisions, decides what to write with [`plan_apply`] (a pure
    /// function of what was read), then writes it in one transaction guarded by what was read.
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
        let have = current.as_ref().map(|(_, rev)| *rev);
        let pinned = pinned_version(valid);
        if !check_current(ns, name, generated, mode, have, pinned)? {
            // The generated name is taken: try another.
            return Ok(None);
        }
        let expected_rev = have.unwrap_or(0);
        let revisions = self.read_revisions(ns, Some(name)).await?;
        let spec: ServiceSpec = valid.manifest.spec.clone().unwrap_or_default();
        let input = ApplyInput {
            ns,
            name,
            generated,
            doc,
            valid,
            spec: &spec,
            current: current.as_ref().map(|(s, _)| s),
            revisions: &revisions,
            now: &now,
        };
        let next = next_revision(&input);
        if let Some(next) = &next
            && !self.revision_name_free(&input, next, expected_rev).await?
        {
            return Ok(None);
        }
        let plan = plan_apply(&input, next, &self.status_context())?;
        if dry_run || plan.result == ApplyResult::Unchanged {
            // Nothing is written: the Service keeps the version it was read at.
            let resource_version = if expected_rev > 0 {
                expected_rev.to_string()
            } else {
                String::new()
            };
            return Ok(Some(plan.into_outcome(resource_version, valid)));
        }
        self.commit_apply(ns, name, plan, expected_rev, pinned, valid)
            .await
    }

    /// Checks that the revision an apply would stamp has a free name. `Ok(false)` means a
    /// concurrent apply stamped this very revision since the Service was read (at
    /// `expected_rev`): then the caller recomputes from the newer state instead of refusing.
    async fn revision_name_free(
        &self,
        input: &ApplyInput<'_>,
        next: &NextRevision,
        expected_rev: i64,
    ) -> Result<bool, ControllerError> {
        let Some(existing) = self
            .store
            .get(&keys::revision(input.ns, &next.name))
            .await?
        else {
            return Ok(true);
        };
        let now_rev = self
            .store
            .get(&keys::service(input.ns, input.name))
            .await?
            .map_or(0, |kv| kv.mod_revision);
        if now_rev != expected_rev {
            return Ok(false);
        }
        let existing: Revision = decode(&existing)?;
        Err(revision_name_taken(input, next, &existing))
    }

    /// Writes an apply's plan in one transaction, guarded by the Service's version as read
    /// (`expected_rev`, 0 when it did not exist) and by the new revision's key being free.
    /// `Ok(None)` means a concurrent write won; that is the caller's conflict (409) only when
    /// it pinned a `resourceVersion`.
    async fn commit_apply(
        &self,
        ns: &str,
        name: &str,
        plan: ApplyPlan,
        expected_rev: i64,
        pinned: Option<i64>,
        valid: &ValidatedService,
    ) -> Result<Option<ApplyOutcome>, ControllerError> {
        let key = keys::service(ns, name);
        let mut txn = Txn::new()
            .when_mod_revision(&key, expected_rev)
            .put(&key, encode(&plan.stored));
        if let Some(r) = &plan.new_revision {
            let rkey = keys::revision(ns, &r.metadata.name);
            txn = txn.when_mod_revision(&rkey, 0).put(rkey, encode(r));
        }
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                info!(
                    namespace = ns,
                    service = name,
                    result = plan.result.as_str(),
                    revision = plan
                        .new_revision
                        .as_ref()
                        .map_or("-", |r| r.metadata.name.as_str()),
                    store_revision = revision,
                    "service applied"
                );
                Ok(Some(plan.into_outcome(revision.to_string(), valid)))
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
        let prefix = match ns {
            Some(ns) => keys::services(Some(ns)),
            None => keys::SERVICES.to_owned(),
        };
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
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
            .list(keys::REVISIONS)
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

// Planning an apply: pure functions over what one attempt read; `Controller::try_apply` reads
// and writes around them.

/// What one apply attempt decides from: the request and what it read from the store.
struct ApplyInput<'a> {
    /// The namespace.
    ns: &'a str,
    /// The Service's name.
    name: &'a str,
    /// Whether `name` was generated from `metadata.generateName`.
    generated: bool,
    /// The manifest document, to place problems at their lines.
    doc: &'a Document,
    /// The validated manifest.
    valid: &'a ValidatedService,
    /// The manifest's spec (the default when it has none).
    spec: &'a ServiceSpec,
    /// The Service as stored, if it exists.
    current: Option<&'a StoredService>,
    /// The Service's revisions as stored, with their versions.
    revisions: &'a [(Revision, i64)],
    /// Now, for timestamps.
    now: &'a str,
}

/// The revision an apply stamps because the template changed (or the Service is new).
struct NextRevision {
    /// Its name: the template's `metadata.name`, or `<service>-<generation>`.
    name: String,
    /// Whether the template named it (rather than skiff).
    named: bool,
    /// The Service's configuration generation once this revision exists.
    generation: i64,
}

/// What one apply attempt writes.
struct ApplyPlan {
    /// The Service to store, status included.
    stored: StoredService,
    /// The revision to stamp, if the template changed.
    new_revision: Option<Revision>,
    /// What the apply amounts to.
    result: ApplyResult,
}

impl ApplyPlan {
    /// The outcome to report, with the Service at `resource_version`.
    fn into_outcome(self, resource_version: String, valid: &ValidatedService) -> ApplyOutcome {
        let mut service = self.stored.service;
        service.metadata.resource_version = resource_version;
        ApplyOutcome {
            service,
            result: self.result,
            created_revision: self.new_revision.map(|r| r.metadata.name),
            warnings: valid.warnings(),
        }
    }
}

/// The `metadata.resourceVersion` the manifest pins, if any.
fn pinned_version(valid: &ValidatedService) -> Option<i64> {
    valid
        .manifest
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse::<i64>().ok())
}

/// Checks what the request expects against the stored Service (`have`: its version, when it
/// exists). `Ok(false)` means a generated name is taken: the caller retries with another.
fn check_current(
    ns: &str,
    name: &str,
    generated: bool,
    mode: ApplyMode,
    have: Option<i64>,
    pinned: Option<i64>,
) -> Result<bool, ControllerError> {
    match (have, pinned) {
        (Some(_), _) if generated => Ok(false),
        (Some(_), _) if mode == ApplyMode::CreateOnly => Err(ControllerError::Conflict {
            message: format!("service `{name}` already exists in namespace `{ns}`"),
        }),
        (None, Some(rv)) => Err(ControllerError::Conflict {
            message: format!(
                "service `{name}` does not exist, but the manifest expects resourceVersion {rv}; drop metadata.resourceVersion to create it"
            ),
        }),
        (Some(have), Some(rv)) if have != rv => Err(ControllerError::Conflict {
            message: format!(
                "service `{name}` changed since resourceVersion {rv} (now {have}); get it again, reapply your change, and retry"
            ),
        }),
        _ => Ok(true),
    }
}

/// The revision to stamp: a new one whenever the template changes (or on creation).
fn next_revision(input: &ApplyInput<'_>) -> Option<NextRevision> {
    let template_changed = match input.current {
        None => true,
        Some(old) => old.service.spec.template != input.spec.template,
    };
    if !template_changed {
        return None;
    }
    let generation = input.current.map_or(0, |s| s.configuration_generation) + 1;
    let named = input.valid.template().metadata.name.clone();
    Some(NextRevision {
        named: named.is_some(),
        name: named.unwrap_or_else(|| format!("{}-{generation:05}", input.name)),
        generation,
    })
}

/// The error for a revision name that `existing` already holds.
fn revision_name_taken(
    input: &ApplyInput<'_>,
    next: &NextRevision,
    existing: &Revision,
) -> ControllerError {
    let (name, rev_name) = (input.name, &next.name);
    let message = if next.named {
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
    invalid_at(
        input.doc,
        "spec.template.metadata.name",
        ProblemKind::Conflict,
        message,
    )
}

/// Decides what one apply attempt writes, from what it read: the Service (new, or the stored
/// one with the manifest's spec, labels and annotations), the revision `next` says to stamp,
/// and the Service's status over all its revisions. Refuses traffic pinned to a revision the
/// Service does not have.
fn plan_apply(
    input: &ApplyInput<'_>,
    next: Option<NextRevision>,
    ctx: &StatusContext,
) -> Result<ApplyPlan, ControllerError> {
    let mut stored = match input.current {
        None => new_service(input),
        Some(old) => changed_service(old, input),
    };
    let new_revision = next.map(|next| {
        stored.configuration_generation = next.generation;
        stamp_revision(input, next, &stored.service.metadata.uid)
    });
    check_traffic(input, new_revision.as_ref())?;
    let all_revisions: Vec<&Revision> = input
        .revisions
        .iter()
        .map(|(r, _)| r)
        .chain(new_revision.iter())
        .collect();
    stored.service.status = status::service_status(&stored.service, &all_revisions, ctx);
    let result = match input.current {
        None => ApplyResult::Created,
        Some(old)
            if old.service.spec == stored.service.spec
                && old.service.metadata == stored.service.metadata
                && old.service.status == stored.service.status =>
        {
            ApplyResult::Unchanged
        }
        Some(_) => ApplyResult::Configured,
    };
    Ok(ApplyPlan {
        stored,
        new_revision,
        result,
    })
}

/// A new Service from the manifest (its configuration generation is 0 until a revision is
/// stamped).
fn new_service(input: &ApplyInput<'_>) -> StoredService {
    let meta = &input.valid.manifest.metadata;
    StoredService {
        service: Service {
            api_version: SERVING_API_VERSION.to_owned(),
            kind: "Service".to_owned(),
            metadata: ObjectMeta {
                name: input.name.to_owned(),
                namespace: input.ns.to_owned(),
                generate_name: if input.generated {
                    meta.generate_name.clone()
                } else {
                    None
                },
                uid: uuid::Uuid::new_v4().to_string(),
                generation: 1,
                resource_version: String::new(),
                creation_timestamp: input.now.to_owned(),
                labels: meta.labels.clone(),
                annotations: meta.annotations.clone(),
            },
            spec: input.spec.clone(),
            status: Default::default(),
        },
        configuration_generation: 0,
    }
}

/// The stored Service with the manifest's spec, labels and annotations; its generation moves
/// on when the spec changes.
fn changed_service(old: &StoredService, input: &ApplyInput<'_>) -> StoredService {
    let meta = &input.valid.manifest.metadata;
    let mut s = old.clone();
    if s.service.spec != *input.spec {
        s.service.metadata.generation += 1;
    }
    s.service.spec = input.spec.clone();
    s.service.metadata.labels = meta.labels.clone();
    s.service.metadata.annotations = meta.annotations.clone();
    s
}

/// A new Revision from the manifest's template: defaults applied, labelled with its Service
/// (whose uid is `service_uid`) and configuration generation.
fn stamp_revision(input: &ApplyInput<'_>, next: NextRevision, service_uid: &str) -> Revision {
    let template = input.valid.template();
    let mut rev_spec = template.spec.clone().unwrap_or_default();
    defaults::apply(&mut rev_spec);
    let mut labels = template.metadata.labels.clone();
    labels.insert(LABEL_SERVICE.to_owned(), input.name.to_owned());
    labels.insert(LABEL_CONFIGURATION.to_owned(), input.name.to_owned());
    labels.insert(
        LABEL_CONFIGURATION_GENERATION.to_owned(),
        next.generation.to_string(),
    );
    labels.insert(LABEL_SERVICE_UID.to_owned(), service_uid.to_owned());
    Revision {
        api_version: SERVING_API_VERSION.to_owned(),
        kind: "Revision".to_owned(),
        metadata: ObjectMeta {
            name: next.name,
            namespace: input.ns.to_owned(),
            generate_name: None,
            uid: uuid::Uuid::new_v4().to_string(),
            generation: 1,
            resource_version: String::new(),
            creation_timestamp: input.now.to_owned(),
            labels,
            annotations: template.metadata.annotations.clone(),
        },
        spec: rev_spec,
        autoscaling: input.valid.autoscaling.clone(),
        status: status::initial_revision_status(input.now),
    }
}

/// Pinned traffic targets must name revisions of this Service (stored, or `new_revision`).
fn check_traffic(
    input: &ApplyInput<'_>,
    new_revision: Option<&Revision>,
) -> Result<(), ControllerError> {
    let known: BTreeMap<&str, ()> = input
        .revisions
        .iter()
        .map(|(r, _)| (r.metadata.name.as_str(), ()))
        .chain(new_revision.map(|r| (r.metadata.name.as_str(), ())))
        .collect();
    let mut problems = Problems::new();
    for (i, t) in input.spec.traffic.iter().flatten().enumerate() {
        if let Some(rev) = &t.revision_name
            && !known.contains_key(rev.as_str())
        {
            let have: Vec<&str> = known.keys().copied().collect();
            problems.push(
                &FieldPath::parse("spec.traffic")
                    .index(i)
                    .key("revisionName"),
                ProblemKind::Conflict,
                format!(
                    "service `{}` has no revision `{rev}` (it has: {})",
                    input.name,
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    }
                ),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ControllerError::Invalid {
            problems: input.doc.place(problems, false),
        })
    }
}
