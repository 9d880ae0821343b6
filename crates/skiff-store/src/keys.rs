//! Every key skiff stores, built and parsed in one place.
//!
//! | Key | Value | Written by |
//! |---|---|---|
//! | `/registry/services/<ns>/<name>` | the Service and its configuration generation | the controller |
//! | `/registry/revisions/<ns>/<name>` | a Revision (spec immutable, status changes) | the controller |
//! | `/scale/<ns>/<service>` | a manual instance count (`skiff scale`) | the instance reconciler |
//! | `/instances/<ns>/<id>` | a running instance's plan, for re-adoption after a restart | the instance reconciler |
//! | `/secrets/<ns>/<name>` | a Secret: metadata, key sizes and its values encrypted (an envelope naming its key) | the secret store |
//! | `/configmaps/<ns>/<name>` | a ConfigMap | the secret store |
//! | `/images/manifests/<digest>` | an image record | the content store |
//! | `/images/tags/<reference>` | the digest a tag points at | the content store |
//! | `/jobs/<ns>/<name>` | a Cloud Run Job: spec and status | the job controller |
//! | `/executions/<ns>/<name>` | an execution of a job, its tasks' states and attempts | the job controller and reconciler |
//! | `/pingsources/<ns>/<name>` | a PingSource | the eventing controller |
//! | `/brokers/<ns>/<name>` | a Broker | the eventing controller |
//! | `/triggers/<ns>/<name>` | a Trigger | the eventing controller |
//!
//! The strings are stored data: changing one makes existing stores unreadable, so they only
//! change with a schema migration. A prefix ends with `/`, so that listing namespace `a` does
//! not also return namespace `ab`. Parsers return `None` for a key of another kind, and split
//! at the first `/` after the kind's prefix: names and namespaces never contain `/` (they are
//! DNS labels), while a tag reference after `/images/tags/` may.

/// Everything the controller stores (Services and revisions): one prefix to watch for route
/// and status changes.
pub const REGISTRY: &str = "/registry/";
/// Every Service.
pub const SERVICES: &str = "/registry/services/";
/// Every revision.
pub const REVISIONS: &str = "/registry/revisions/";
/// Every manual scale override.
pub const SCALES: &str = "/scale/";
/// Every recorded instance.
pub const INSTANCES: &str = "/instances/";
/// Every Secret (outside [`REGISTRY`]: the route reconciler has no use for them).
pub const SECRETS: &str = "/secrets/";
/// Every ConfigMap.
pub const CONFIGMAPS: &str = "/configmaps/";
/// Every image record.
pub const IMAGE_MANIFESTS: &str = "/images/manifests/";
/// Every image tag.
pub const IMAGE_TAGS: &str = "/images/tags/";
/// Every job.
pub const JOBS: &str = "/jobs/";
/// Every execution of a job.
pub const EXECUTIONS: &str = "/executions/";
/// Every PingSource.
pub const PINGSOURCES: &str = "/pingsources/";
/// Every Broker.
pub const BROKERS: &str = "/brokers/";
/// Every Trigger.
pub const TRIGGERS: &str = "/triggers/";

/// `<kind><ns>/<name>`.
fn namespaced(kind: &str, ns: &str, name: &str) -> String {
    format!("{kind}{ns}/{name}")
}

/// `<kind><ns>/`, or `<kind>` for every namespace.
fn namespace_prefix(kind: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{kind}{ns}/"),
        None => kind.to_owned(),
    }
}

/// Splits `<kind><ns>/<name>` into `(ns, name)`.
fn parse_namespaced<'k>(kind: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    key.strip_prefix(kind)?.split_once('/')
}

/// A Service: `/registry/services/<ns>/<name>`.
pub fn service(ns: &str, name: &str) -> String {
    namespaced(SERVICES, ns, name)
}

/// The prefix of the Services of one namespace, or of all of them.
pub fn services(ns: Option<&str>) -> String {
    namespace_prefix(SERVICES, ns)
}

/// `(ns, name)` of a Service key.
pub fn parse_service(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(SERVICES, key)
}

/// A revision: `/registry/revisions/<ns>/<name>`.
pub fn revision(ns: &str, name: &str) -> String {
    namespaced(REVISIONS, ns, name)
}

/// The prefix of the revisions of one namespace, or of all of them.
pub fn revisions(ns: Option<&str>) -> String {
    namespace_prefix(REVISIONS, ns)
}

/// The prefix under which one Service's revisions lie: every revision name starts with
/// `<service>-` (validation insists), so one short range holds them, shared only with
/// Services whose names extend this one's (callers filter by the Service label).
pub fn revisions_of_service(ns: &str, service: &str) -> String {
    format!("{REVISIONS}{ns}/{service}-")
}

/// `(ns, name)` of a revision key.
pub fn parse_revision(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(REVISIONS, key)
}

/// A Service's manual scale override: `/scale/<ns>/<service>`.
pub fn scale(ns: &str, service: &str) -> String {
    namespaced(SCALES, ns, service)
}

/// The prefix of the scale overrides of one namespace, or of all of them.
pub fn scales(ns: Option<&str>) -> String {
    namespace_prefix(SCALES, ns)
}

/// `(ns, service)` of a scale override key.
pub fn parse_scale(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(SCALES, key)
}

/// A recorded instance: `/instances/<ns>/<id>`.
pub fn instance(ns: &str, id: &str) -> String {
    namespaced(INSTANCES, ns, id)
}

/// The prefix of the recorded instances of one namespace, or of all of them.
pub fn instances(ns: Option<&str>) -> String {
    namespace_prefix(INSTANCES, ns)
}

/// `(ns, id)` of an instance key.
pub fn parse_instance(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(INSTANCES, key)
}

/// A Secret: `/secrets/<ns>/<name>`.
pub fn secret(ns: &str, name: &str) -> String {
    namespaced(SECRETS, ns, name)
}

/// The prefix of the Secrets of one namespace, or of all of them.
pub fn secrets(ns: Option<&str>) -> String {
    namespace_prefix(SECRETS, ns)
}

/// `(ns, name)` of a Secret key.
pub fn parse_secret(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(SECRETS, key)
}

/// A ConfigMap: `/configmaps/<ns>/<name>`.
pub fn configmap(ns: &str, name: &str) -> String {
    namespaced(CONFIGMAPS, ns, name)
}

/// The prefix of the ConfigMaps of one namespace, or of all of them.
pub fn configmaps(ns: Option<&str>) -> String {
    namespace_prefix(CONFIGMAPS, ns)
}

/// `(ns, name)` of a ConfigMap key.
pub fn parse_configmap(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(CONFIGMAPS, key)
}

/// A job: `/jobs/<ns>/<name>`.
pub fn job(ns: &str, name: &str) -> String {
    namespaced(JOBS, ns, name)
}

/// The prefix of the jobs of one namespace, or of all of them.
pub fn jobs(ns: Option<&str>) -> String {
    namespace_prefix(JOBS, ns)
}

/// `(ns, name)` of a job key.
pub fn parse_job(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(JOBS, key)
}

/// A execution: `/executions/<ns>/<name>`.
pub fn execution(ns: &str, name: &str) -> String {
    namespaced(EXECUTIONS, ns, name)
}

/// The prefix of the executions of one namespace, or of all of them.
pub fn executions(ns: Option<&str>) -> String {
    namespace_prefix(EXECUTIONS, ns)
}

/// `(ns, name)` of a execution key.
pub fn parse_execution(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(EXECUTIONS, key)
}

/// A PingSource: `/pingsources/<ns>/<name>`.
pub fn pingsource(ns: &str, name: &str) -> String {
    namespaced(PINGSOURCES, ns, name)
}

/// The prefix of the PingSources of one namespace, or of all of them.
pub fn pingsources(ns: Option<&str>) -> String {
    namespace_prefix(PINGSOURCES, ns)
}

/// `(ns, name)` of a PingSource key.
pub fn parse_pingsource(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(PINGSOURCES, key)
}

/// A Broker: `/brokers/<ns>/<name>`.
pub fn broker(ns: &str, name: &str) -> String {
    namespaced(BROKERS, ns, name)
}

/// The prefix of the Brokers of one namespace, or of all of them.
pub fn brokers(ns: Option<&str>) -> String {
    namespace_prefix(BROKERS, ns)
}

/// `(ns, name)` of a Broker key.
pub fn parse_broker(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(BROKERS, key)
}

/// A Trigger: `/triggers/<ns>/<name>`.
pub fn trigger(ns: &str, name: &str) -> String {
    namespaced(TRIGGERS, ns, name)
}

/// The prefix of the Triggers of one namespace, or of all of them.
pub fn triggers(ns: Option<&str>) -> String {
    namespace_prefix(TRIGGERS, ns)
}

/// `(ns, name)` of a Trigger key.
pub fn parse_trigger(key: &str) -> Option<(&str, &str)> {
    parse_namespaced(TRIGGERS, key)
}

/// An image record: `/images/manifests/<digest>` (the manifest's digest).
pub fn image_manifest(digest: &str) -> String {
    format!("{IMAGE_MANIFESTS}{digest}")
}

/// The digest of an image record key.
pub fn parse_image_manifest(key: &str) -> Option<&str> {
    key.strip_prefix(IMAGE_MANIFESTS)
}

/// An image tag: `/images/tags/<reference>` (`registry/repo:tag`).
pub fn image_tag(reference: &str) -> String {
    format!("{IMAGE_TAGS}{reference}")
}

/// The reference of an image tag key.
pub fn parse_image_tag(key: &str) -> Option<&str> {
    key.strip_prefix(IMAGE_TAGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys are byte for byte those earlier skiff versions stored, so existing stores stay
    /// readable.
    #[test]
    fn keys_match_the_stored_format() {
        assert_eq!(
            service("default", "hello"),
            "/registry/services/default/hello"
        );
        assert_eq!(services(Some("default")), "/registry/services/default/");
        assert_eq!(services(None), "/registry/services/");
        assert_eq!(
            revision("default", "hello-00001"),
            "/registry/revisions/default/hello-00001"
        );
        assert_eq!(revisions(Some("ns")), "/registry/revisions/ns/");
        assert_eq!(revisions(None), "/registry/revisions/");
        assert_eq!(scale("ns", "svc"), "/scale/ns/svc");
        assert_eq!(scales(None), "/scale/");
        assert_eq!(scales(Some("ns")), "/scale/ns/");
        assert_eq!(
            instance("ns", "svc-00001-bcdfg"),
            "/instances/ns/svc-00001-bcdfg"
        );
        assert_eq!(instances(None), "/instances/");
        assert_eq!(instances(Some("ns")), "/instances/ns/");
        assert_eq!(image_manifest("sha256:abc"), "/images/manifests/sha256:abc");
        assert_eq!(secret("ns", "db"), "/secrets/ns/db");
        assert_eq!(secrets(Some("ns")), "/secrets/ns/");
        assert_eq!(configmap("ns", "c"), "/configmaps/ns/c");
        assert_eq!(configmaps(None), "/configmaps/");
        assert!(!secret("a", "b").starts_with(REGISTRY));
        assert_eq!(
            image_tag("docker.io/library/busybox:1.36"),
            "/images/tags/docker.io/library/busybox:1.36"
        );
        // Every kind is under the prefix that lists it, and Services and revisions under
        // the one the route watcher follows.
        assert!(service("a", "b").starts_with(&services(Some("a"))));
        assert!(service("a", "b").starts_with(REGISTRY));
        assert!(revision("a", "b").starts_with(REGISTRY));
        assert!(!service("ab", "c").starts_with(&services(Some("a"))));
    }

    /// Each parser gives back what its builder was given, and rejects keys of other kinds.
    #[test]
    fn parsers_invert_builders() {
        assert_eq!(parse_service(&service("ns", "n")), Some(("ns", "n")));
        assert_eq!(parse_revision(&revision("ns", "n-1")), Some(("ns", "n-1")));
        assert_eq!(parse_scale(&scale("ns", "svc")), Some(("ns", "svc")));
        assert_eq!(parse_instance(&instance("ns", "i")), Some(("ns", "i")));
        assert_eq!(
            parse_image_manifest(&image_manifest("sha256:abc")),
            Some("sha256:abc")
        );
        assert_eq!(
            parse_image_tag(&image_tag("r.io/a/b:t")),
            Some("r.io/a/b:t")
        );

        assert_eq!(parse_secret(&secret("ns", "s")), Some(("ns", "s")));
        assert_eq!(parse_configmap(&configmap("ns", "c")), Some(("ns", "c")));
        assert_eq!(parse_secret(&configmap("ns", "c")), None);
        assert_eq!(parse_service(&revision("ns", "n")), None);
        assert_eq!(parse_revision(&service("ns", "n")), None);
        assert_eq!(parse_scale(&instance("ns", "i")), None);
        assert_eq!(parse_instance(&scale("ns", "s")), None);
        assert_eq!(parse_image_tag(&image_manifest("d")), None);
        // A key with no name part is not a Service.
        assert_eq!(parse_service("/registry/services/ns"), None);
    }
}
