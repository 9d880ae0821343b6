//! Manifest parsing and validation, end to end from text: the real Knative samples, one case
//! for each rule, and property tests that no input makes the parser panic.

use proptest::prelude::*;
use skiff_api::manifest::parse_services;
use skiff_api::{Problem, ProblemKind};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/knative");

/// Parses one document and returns its problems (empty when it is accepted).
fn problems(yaml: &str) -> Vec<Problem> {
    match parse_services(yaml) {
        Err(p) => vec![p],
        Ok(input) => input.problems(),
    }
}

/// Asserts that `yaml` is refused with a problem at exactly `path` whose message contains
/// `message`.
#[track_caller]
fn assert_refused(yaml: &str, path: &str, message: &str) {
    let ps = problems(yaml);
    assert!(
        ps.iter()
            .any(|p| p.path == path && p.message.contains(message)),
        "expected a problem at `{path}` containing {message:?}; got:\n{}",
        ps.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
}

#[track_caller]
fn assert_accepted(yaml: &str) {
    let ps = problems(yaml);
    assert!(
        ps.is_empty(),
        "expected acceptance; got:\n{}",
        ps.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
}

/// A valid Service with `extra` spliced in as container fields (indented 8 spaces).
fn with_container(extra: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n{}",
        indent(extra, 8)
    )
}

/// A valid Service with `extra` spliced in as revision spec fields (indented 6 spaces).
fn with_revision(extra: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n{}",
        indent(extra, 6)
    )
}

/// A valid Service with template annotations.
fn with_annotations(pairs: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    metadata:\n      annotations:\n{}    spec:\n      containers:\n      - image: nginx\n",
        indent(pairs, 8)
    )
}

/// A valid Service with `traffic` entries spliced in under spec.
fn with_traffic(traffic: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n  traffic:\n{}",
        indent(traffic, 2)
    )
}

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// Every real knative/docs sample is either accepted or refused with errors that all name a
/// field path; the known outcomes are pinned.
#[test]
fn knative_fixtures_accepted_or_refused_with_paths() {
    let mut seen = 0;
    for entry in std::fs::read_dir(FIXTURES).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let input = parse_services(&text).unwrap_or_else(|p| panic!("{name}: syntax {p}"));
        let problems = input.problems();
        for p in &problems {
            assert!(!p.path.is_empty(), "{name}: problem without a path: {p}");
            assert!(p.line.is_some(), "{name}: problem without a line: {p}");
        }
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        match name.as_str() {
            "autoscale-go.yaml" | "multi-container.yaml" => {
                assert!(problems.is_empty(), "{name}: {problems:?}")
            }
            "helloworld-go.yaml" => {
                assert_eq!(paths, ["spec.template.spec.containers[0].image"], "{name}")
            }
            "tag-header-based-routing.yaml" => {
                assert_eq!(input.documents.len(), 2);
                assert_eq!(
                    paths,
                    [
                        "spec.template.spec.containers[0].image",
                        "spec.template.spec.containers[0].image"
                    ]
                );
                assert_eq!(problems[1].document, Some(1));
                assert_eq!(problems[1].line, Some(42));
            }
            "secrets-go.yaml" => {
                // Knative requires `readOnly: true` on a secret volume's mount; the sample
                // predates that rule.
                assert_eq!(
                    paths,
                    ["spec.template.spec.containers[0].volumeMounts[0].readOnly"]
                );
                assert_eq!(problems[0].kind, ProblemKind::Invalid);
                assert!(problems[0].message.contains("must be true"));
            }
            other => panic!("unexpected fixture {other}: {problems:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 5);
}

/// The example from the issue: an invalid port name names its path, line and column.
#[test]
fn port_name_error_has_path_line_and_column() {
    let yaml = with_container("ports:\n- name: http\n  containerPort: 8080\n");
    let ps = problems(&yaml);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(
        ps[0].to_string(),
        "spec.template.spec.containers[0].ports[0].name (line 11, column 17): must be \"http1\" or \"h2c\""
    );
}

/// All problems of a document are reported at once, in file order.
#[test]
fn reports_every_problem_at_once() {
    let yaml = with_container(
        "imagePullPolicyy: Always\nports:\n- name: http\n  protocl: TCP\nenv:\n- name: PORT\n  value: x\nlifecycle: {}\n",
    );
    let ps = problems(&yaml);
    let paths: Vec<&str> = ps.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.template.spec.containers[0].imagePullPolicyy",
            "spec.template.spec.containers[0].ports[0].name",
            "spec.template.spec.containers[0].ports[0].protocl",
            "spec.template.spec.containers[0].env[0].name",
            "spec.template.spec.containers[0].lifecycle",
        ]
    );
    assert!(ps[0].message.contains("did you mean `imagePullPolicy`"));
    assert!(ps[2].message.contains("did you mean `protocol`"));
    assert_eq!(ps[4].kind, ProblemKind::NotAllowed);
}

/// Unknown fields are refused at every level, with hints where a near miss exists.
#[test]
fn unknown_fields() {
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers: [{image: nginx}]\n  trafic: []\n",
        "spec.trafic",
        "did you mean `traffic`",
    );
    assert_refused(
        &with_container("readinessProbe:\n  httpGet:\n    pth: /\n"),
        "spec.template.spec.containers[0].readinessProbe.httpGet.pth",
        "did you mean `path`",
    );
    assert_refused(
        &with_revision("containerConcurency: 1\n"),
        "spec.template.spec.containerConcurency",
        "did you mean `containerConcurrency`",
    );
    assert_refused(
        &with_container("whatever: 1\n"),
        "spec.template.spec.containers[0].whatever",
        "unknown field",
    );
}

/// Knative fields skiff does not support yet are refused by name, never ignored.
#[test]
fn unsupported_fields_are_refused_by_name() {
    let cases = [
        (
            with_revision("serviceAccountName: robot\n"),
            "spec.template.spec.serviceAccountName",
        ),
        (
            with_revision("nodeSelector: {a: b}\n"),
            "spec.template.spec.nodeSelector",
        ),
        (
            with_revision(
                "volumes:\n- name: v\n  projected:\n    sources: [{serviceAccountToken: {path: t}}]\n",
            ),
            "spec.template.spec.volumes[0].projected.sources[0].serviceAccountToken",
        ),
        (
            with_container("terminationMessagePath: /x\n"),
            "spec.template.spec.containers[0].terminationMessagePath",
        ),
        (
            with_container("readinessProbe:\n  grpc: {port: 8080}\n"),
            "spec.template.spec.containers[0].readinessProbe.grpc",
        ),
        (
            with_container("resources:\n  limits:\n    nvidia.com/gpu: 1\n"),
            "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu",
        ),
        (
            with_annotations("autoscaling.knative.dev/class: hpa.autoscaling.knative.dev\n"),
            "spec.template.metadata.annotations.autoscaling.knative.dev/class",
        ),
    ];
    for (yaml, path) in cases {
        assert_refused(&yaml, path, "not supported by skiff yet");
    }
}

/// Fields Knative itself forbids are refused as not allowed.
#[test]
fn knative_forbidden_fields() {
    assert_refused(
        &with_container("stdin: true\n"),
        "spec.template.spec.containers[0].stdin",
        "not allowed",
    );
    assert_refused(
        &with_container("ports:\n- containerPort: 80\n  hostPort: 80\n"),
        "spec.template.spec.containers[0].ports[0].hostPort",
        "not allowed",
    );
    assert_refused(
        &with_container(
            "volumeMounts:\n- name: v\n  mountPath: /data\n  mountPropagation: Bidirectional\n",
        ),
        "spec.template.spec.containers[0].volumeMounts[0].mountPropagation",
        "not allowed",
    );
    assert_refused(
        &with_container("securityContext:\n  privileged: true\n"),
        "spec.template.spec.containers[0].securityContext.privileged",
        "not allowed",
    );
    assert_refused(
        &with_container("securityContext:\n  capabilities:\n    add: [SYS_ADMIN]\n"),
        "spec.template.spec.containers[0].securityContext.capabilities.add[0]",
        "NET_BIND_SERVICE",
    );
    assert_refused(
        &with_revision("volumes:\n- name: h\n  hostPath: {path: /}\n"),
        "spec.template.spec.volumes[0].hostPath",
        "not allowed",
    );
}

/// apiVersion, kind, name and the template are required; the name follows DNS rules.
#[test]
fn top_level_rules() {
    assert_refused(
        "kind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "apiVersion",
        "required",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "apiVersion",
        "retired",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "kind",
        "must be `Service`",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.name",
        "generateName",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: Hello}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.name",
        "lowercase",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: 1abc}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.name",
        "start with a lowercase letter",
    );
    assert_refused(
        &format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {}}}\nspec: {{template: {{spec: {{containers: [{{image: nginx}}]}}}}}}\n",
            "a".repeat(60)
        ),
        "metadata.name",
        "revision names",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a, namespace: Bad_NS}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.namespace",
        "lowercase",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
        "spec.template",
        "required",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: []}}}\n",
        "spec.template.spec.containers",
        "at least one container",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {metadata: {name: other-1}, spec: {containers: [{image: nginx}]}}}\n",
        "spec.template.metadata.name",
        "must start with the Service's name: `a-`",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a, labels: {serving.knative.dev/service: x}}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.labels.serving.knative.dev/service",
        "skiff sets this label",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a, resourceVersion: abc}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.resourceVersion",
        "not a resource version",
    );
    assert_accepted(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {generateName: hello-}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
    );
    assert_refused(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {generateName: Hello-}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n",
        "metadata.generateName",
        "cannot prefix",
    );
}

/// Output-only fields (status, uid, …) are skipped so a `get -o yaml` round-trips.
#[test]
fn output_only_fields_are_skipped() {
    assert_accepted(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\n  uid: 1234\n  generation: 3\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n  resourceVersion: \"17\"\nspec:\n  template:\n    metadata:\n      creationTimestamp: null\n    spec:\n      containers: [{image: nginx}]\nstatus:\n  url: http://a.default.localhost\n",
    );
}

/// Image references are parsed and refused with their path when invalid.
#[test]
fn image_references() {
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: \"docker.io/{username}/helloworld-go\"}]}}}\n";
    assert_refused(
        yaml,
        "spec.template.spec.containers[0].image",
        "not a valid image reference",
    );
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: Nginx}]}}}\n";
    assert_refused(yaml, "spec.template.spec.containers[0].image", "lowercase");
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{name: c}]}}}\n";
    assert_refused(yaml, "spec.template.spec.containers[0].image", "required");
    assert_accepted(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: \"127.0.0.1:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}]}}}\n",
    );
}

/// Container rules: ports, env, resources, probes, security context, mounts.
#[test]
fn container_rules() {
    let c = "spec.template.spec.containers[0]";
    assert_refused(
        &with_container("ports:\n- containerPort: 80\n- containerPort: 81\n"),
        &format!("{c}.ports"),
        "at most one port",
    );
    assert_refused(
        &with_container("ports:\n- containerPort: 70000\n"),
        &format!("{c}.ports[0].containerPort"),
        "out of range",
    );
    assert_refused(
        &with_container("ports:\n- containerPort: 80\n  protocol: UDP\n"),
        &format!("{c}.ports[0].protocol"),
        "TCP",
    );
    assert_accepted(&with_container(
        "ports:\n- name: h2c\n  containerPort: 8080\n  protocol: TCP\n",
    ));
    assert_refused(
        &with_container("env:\n- value: x\n"),
        &format!("{c}.env[0].name"),
        "required",
    );
    assert_refused(
        &with_container("env:\n- name: A=B\n  value: x\n"),
        &format!("{c}.env[0].name"),
        "other than '='",
    );
    assert_refused(
        &with_container("env:\n- name: K_SERVICE\n  value: x\n"),
        &format!("{c}.env[0].name"),
        "reserved",
    );
    assert_refused(
        &with_container(
            "env:\n- name: A\n  value: x\n  valueFrom:\n    fieldRef: {fieldPath: metadata.name}\n",
        ),
        &format!("{c}.env[0]"),
        "only one of value and valueFrom",
    );
    assert_refused(
        &with_container(
            "env:\n- name: A\n  valueFrom:\n    fieldRef: {fieldPath: spec.nodeName}\n",
        ),
        &format!("{c}.env[0].valueFrom.fieldRef.fieldPath"),
        "not supported by skiff yet",
    );
    assert_accepted(&with_container(
        "env:\n- name: A\n  valueFrom:\n    fieldRef: {fieldPath: \"metadata.labels['app']\"}\n- name: B\n  valueFrom:\n    resourceFieldRef: {resource: limits.memory, divisor: 1Mi}\n",
    ));
    assert_refused(
        &with_container("env:\n- name: A\n  value: 8080\n"),
        &format!("{c}.env[0].value"),
        "must be a string",
    );
    assert_refused(
        &with_container("resources:\n  limits:\n    memory: 1Gi\n  requests:\n    memory: 2Gi\n"),
        &format!("{c}.resources.requests.memory"),
        "more than its limit",
    );
    assert_refused(
        &with_container("resources:\n  limits:\n    cpu: \"0\"\n"),
        &format!("{c}.resources.limits.cpu"),
        "more than zero",
    );
    assert_refused(
        &with_container("resources:\n  limits:\n    memory: 1Mi\n"),
        &format!("{c}.resources.limits.memory"),
        "at least 6Mi",
    );
    assert_refused(
        &with_container("resources:\n  limits:\n    disk: 1Gi\n"),
        &format!("{c}.resources.limits.disk"),
        "unknown resource",
    );
    assert_accepted(&with_container(
        "resources:\n  limits:\n    memory: 350Mi\n    cpu: 1\n  requests:\n    cpu: 250m\n    memory: 128Mi\n",
    ));
    assert_refused(
        &with_container("readinessProbe:\n  httpGet: {path: /}\n  tcpSocket: {}\n"),
        &format!("{c}.readinessProbe"),
        "only one of",
    );
    assert_refused(
        &with_container("livenessProbe:\n  periodSeconds: 5\n"),
        &format!("{c}.livenessProbe"),
        "set one of",
    );
    assert_refused(
        &with_container("livenessProbe:\n  httpGet: {path: health}\n"),
        &format!("{c}.livenessProbe.httpGet.path"),
        "start with `/`",
    );
    assert_refused(
        &with_container(
            "ports: [{containerPort: 8080}]\nreadinessProbe:\n  tcpSocket: {port: 9000}\n",
        ),
        &format!("{c}.readinessProbe.tcpSocket.port"),
        "container's port (8080)",
    );
    assert_refused(
        &with_container("livenessProbe:\n  exec: {command: []}\n"),
        &format!("{c}.livenessProbe.exec.command"),
        "required",
    );
    assert_refused(
        &with_container("livenessProbe:\n  tcpSocket: {}\n  successThreshold: 2\n"),
        &format!("{c}.livenessProbe.successThreshold"),
        "must be 1",
    );
    assert_refused(
        &with_container("livenessProbe:\n  tcpSocket: {}\n  timeoutSeconds: 0\n"),
        &format!("{c}.livenessProbe.timeoutSeconds"),
        "out of range",
    );
    assert_accepted(&with_container(
        "readinessProbe:\n  periodSeconds: 0\nlivenessProbe:\n  httpGet: {path: /healthz, httpHeaders: [{name: X-Probe, value: \"1\"}]}\n  periodSeconds: 1\n  failureThreshold: 3\nstartupProbe:\n  exec: {command: [cat, /tmp/ready]}\n",
    ));
    assert_refused(
        &with_container("workingDir: app\n"),
        &format!("{c}.workingDir"),
        "absolute",
    );
    assert_refused(
        &with_container("securityContext:\n  runAsNonRoot: true\n  runAsUser: 0\n"),
        &format!("{c}.securityContext.runAsUser"),
        "contradicts",
    );
    assert_refused(
        &with_container("securityContext:\n  allowPrivilegeEscalation: true\n"),
        &format!("{c}.securityContext.allowPrivilegeEscalation"),
        "no-new-privileges",
    );
    assert_refused(
        &with_container("securityContext:\n  capabilities:\n    drop: [NOPE]\n"),
        &format!("{c}.securityContext.capabilities.drop[0]"),
        "not a capability",
    );
    assert_accepted(&with_container(
        "securityContext:\n  runAsUser: 2020\n  runAsGroup: 2020\n  runAsNonRoot: true\n  readOnlyRootFilesystem: true\n  allowPrivilegeEscalation: false\n  capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n  seccompProfile: {type: RuntimeDefault}\n",
    ));
    assert_refused(
        &with_container("imagePullPolicy: Sometimes\n"),
        &format!("{c}.imagePullPolicy"),
        "Always, IfNotPresent or Never",
    );
}

/// Volumes must be declared, mounted, uniquely named and mounted on allowed paths.
#[test]
fn volume_rules() {
    let ok = "volumes:\n- name: scratch\n  emptyDir: {medium: Memory, sizeLimit: 64Mi}\n";
    let mount = |path: &str| format!("volumeMounts:\n- name: scratch\n  mountPath: {path}\n");
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n{}{}",
        indent(&mount("/data"), 8),
        indent(ok, 6)
    );
    assert_accepted(&yaml);
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n{}{}",
        indent(&mount("/tmp"), 8),
        indent(ok, 6)
    );
    // /tmp may take an emptyDir (it replaces the runtime's /tmp); Knative's other reserved
    // paths may not.
    assert_accepted(&yaml);
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n{}{}",
        indent(&mount("/var/log"), 8),
        indent(ok, 6)
    );
    assert_refused(
        &yaml,
        "spec.template.spec.containers[0].volumeMounts[0].mountPath",
        "reserved",
    );
    assert_refused(
        &with_revision(ok),
        "spec.template.spec.volumes[0]",
        "not mounted",
    );
    assert_refused(
        &with_container(&mount("/data")),
        "spec.template.spec.containers[0].volumeMounts[0].name",
        "no volume named",
    );
    assert_refused(
        &with_revision("volumes:\n- name: scratch\n  emptyDir: {medium: Disk}\n"),
        "spec.template.spec.volumes[0].emptyDir.medium",
        "not a medium",
    );
}

/// Volumes never land on what the runtime mounts itself (the kernel's file systems, the
/// files skiff writes), however the path is spelled; /dev/shm may take one.
#[test]
fn runtime_mount_points_are_refused() {
    let ok = "volumes:\n- name: scratch\n  emptyDir: {medium: Memory, sizeLimit: 64Mi}\n";
    let yaml = |path: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n        volumeMounts:\n        - name: scratch\n          mountPath: \"{path}\"\n{}",
            indent(ok, 6)
        )
    };
    let at = "spec.template.spec.containers[0].volumeMounts[0].mountPath";
    for path in [
        "/proc",
        "/proc/sys",
        "/sys/",
        "//sys/fs/cgroup",
        "/dev/pts",
        "/./dev/net",
    ] {
        assert_refused(&yaml(path), at, "which the container runtime mounts itself");
    }
    for path in ["/etc/hosts", "/etc//resolv.conf", "/etc/hostname/"] {
        assert_refused(&yaml(path), at, "is mounted by skiff itself");
    }
    for path in ["/dev/shm", "/procfs", "/system", "/etc/hosts.d", "/devices"] {
        assert_accepted(&yaml(path));
    }
}

/// A NUL byte can never reach a process's arguments or environment: refused at its path.
#[test]
fn nul_bytes_are_refused() {
    assert_refused(
        &with_container("env:\n- name: A\n  value: \"x\\0y\"\n"),
        "spec.template.spec.containers[0].env[0].value",
        "NUL",
    );
    assert_refused(
        &with_container("command: [\"/bin/sh\", \"-c\\0\"]\n"),
        "spec.template.spec.containers[0].command[1]",
        "NUL",
    );
    assert_refused(
        &with_container("args: [\"\\0\"]\n"),
        "spec.template.spec.containers[0].args[0]",
        "NUL",
    );
    assert_refused(
        &with_container("workingDir: \"/a\\0\"\n"),
        "spec.template.spec.containers[0].workingDir",
        "NUL",
    );
    assert_refused(
        &with_container("readinessProbe:\n  exec:\n    command: [\"x\\0\"]\n"),
        "spec.template.spec.containers[0].readinessProbe.exec.command[0]",
        "NUL",
    );
    assert_refused(
        &with_annotations("a.example.com/x: \"\\0\"\n"),
        "spec.template.metadata.annotations.a.example.com/x",
        "NUL",
    );
}

/// Revision-level settings are range-checked.
#[test]
fn revision_rules() {
    let r = "spec.template.spec";
    assert_refused(
        &with_revision("containerConcurrency: -1\n"),
        &format!("{r}.containerConcurrency"),
        "out of range",
    );
    assert_refused(
        &with_revision("timeoutSeconds: 0\n"),
        &format!("{r}.timeoutSeconds"),
        "out of range",
    );
    assert_refused(
        &with_revision("timeoutSeconds: 10\nresponseStartTimeoutSeconds: 20\n"),
        &format!("{r}.responseStartTimeoutSeconds"),
        "1 to 10",
    );
    assert_refused(
        &with_revision("idleTimeoutSeconds: 99999\n"),
        &format!("{r}.idleTimeoutSeconds"),
        "out of range",
    );
    assert_accepted(&with_revision(
        "containerConcurrency: 80\ntimeoutSeconds: 300\nresponseStartTimeoutSeconds: 60\nidleTimeoutSeconds: 120\n",
    ));
    let two = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}, {image: busybox}]}}}\n";
    assert_refused(
        two,
        "spec.template.spec.containers",
        "exactly one must declare the serving port",
    );
    let dup = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{name: x, image: nginx, ports: [{containerPort: 80}]}, {name: x, image: busybox}]}}}\n";
    assert_refused(dup, "spec.template.spec.containers[1].name", "duplicate");
}

/// Traffic follows Knative's rules: percent sums to 100, tags unique, latestRevision iff no
/// revisionName, configurationName only of this Service.
#[test]
fn traffic_rules() {
    assert_accepted(&with_traffic("- latestRevision: true\n  percent: 100\n"));
    assert_accepted(&with_traffic(
        "- revisionName: hello-00001\n  percent: 50\n  tag: blue\n- latestRevision: true\n  percent: 50\n  tag: green\n",
    ));
    assert_refused(
        &with_traffic("- latestRevision: true\n  percent: 60\n"),
        "spec.traffic",
        "sum to 60",
    );
    assert_refused(
        &with_traffic(
            "- latestRevision: true\n  percent: 101\n- revisionName: hello-1\n  percent: -1\n",
        ),
        "spec.traffic[0].percent",
        "out of range",
    );
    assert_refused(
        &with_traffic("- revisionName: hello-00001\n  latestRevision: true\n  percent: 100\n"),
        "spec.traffic[0].latestRevision",
        "may not be true",
    );
    assert_refused(
        &with_traffic("- latestRevision: false\n  percent: 100\n"),
        "spec.traffic[0].latestRevision",
        "may not be false",
    );
    assert_refused(
        &with_traffic("- percent: 50\n  tag: a\n- percent: 50\n  tag: a\n"),
        "spec.traffic[1].tag",
        "duplicate tag",
    );
    assert_refused(
        &with_traffic("- percent: 100\n  tag: Blue\n"),
        "spec.traffic[0].tag",
        "lowercase",
    );
    assert_refused(
        &with_traffic("- configurationName: other\n  percent: 100\n"),
        "spec.traffic[0].configurationName",
        "this Service's configuration",
    );
    assert_accepted(&with_traffic(
        "- configurationName: hello\n  percent: 100\n",
    ));
    assert_refused(
        &with_traffic("- percent: 100\n  url: http://x\n"),
        "spec.traffic[0].url",
        "not allowed",
    );
    let scalar = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}]}}, traffic: 5}\n";
    assert_refused(scalar, "spec.traffic", "must be a list");
    let empty = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{image: nginx}]}}, traffic: []}\n";
    assert_refused(empty, "spec.traffic", "at least one target");
}

/// A valid Service with annotations on its own metadata.
fn with_service_annotations(pairs: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  annotations:\n{}spec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n",
        indent(pairs, 4)
    )
}

/// SLO and budget annotations are accepted on the Service's metadata, refused on the
/// revision template, and each bad value is refused at its own path saying what is accepted.
#[test]
fn slo_annotations() {
    assert_accepted(&with_service_annotations(
        "skiff.dev/slo-availability: \"99.9\"\nskiff.dev/slo-latency: \"300ms@95\"\nskiff.dev/slo-period: 7d\nskiff.dev/slo-policy: simple\nskiff.dev/budget: 5/day\n",
    ));
    assert_accepted(&with_service_annotations("skiff.dev/budget: 150/month\n"));
    let at = |k: &str| format!("metadata.annotations.skiff.dev/{k}");
    assert_refused(
        &with_service_annotations(
            "skiff.dev/slo-latency: \"250ms@95\"\nskiff.dev/slo-availability: \"100\"\n",
        ),
        &at("slo-availability"),
        "above 0 and below 100",
    );
    assert_refused(
        &with_service_annotations("skiff.dev/slo-latency: \"400ms@95\"\n"),
        &at("slo-latency"),
        "use one of 500us, 1ms",
    );
    assert_refused(
        &with_service_annotations("skiff.dev/slo-availability: \"99\"\nskiff.dev/slo-period: 2w\n"),
        &at("slo-period"),
        "from 1h to 90d",
    );
    assert_refused(
        &with_service_annotations(
            "skiff.dev/slo-availability: \"99\"\nskiff.dev/slo-policy: strict\n",
        ),
        &at("slo-policy"),
        "`workbook` or `simple`",
    );
    assert_refused(
        &with_service_annotations("skiff.dev/budget: 5/week\n"),
        &at("budget"),
        "`day` or `month`",
    );
    let alone =
        with_service_annotations("skiff.dev/slo-period: 7d\nskiff.dev/slo-policy: simple\n");
    assert_refused(&alone, &at("slo-period"), "without an objective");
    assert_refused(&alone, &at("slo-policy"), "without an objective");
    assert_refused(
        &with_annotations("skiff.dev/slo-availability: \"99.9\"\n"),
        "spec.template.metadata.annotations.skiff.dev/slo-availability",
        "set it on the Service's metadata.annotations",
    );
    assert_refused(
        &with_service_annotations("skiff.dev/slo-availabilty: \"99.9\"\n"),
        &at("slo-availabilty"),
        "unknown skiff annotation",
    );
}

/// Every documented autoscaling annotation is range-checked at its own path; unknown
/// `skiff.dev/` annotations are errors; other annotations are kept.
#[test]
fn annotations() {
    assert_accepted(&with_annotations(
        "autoscaling.knative.dev/target: \"10\"\nautoscaling.knative.dev/minScale: \"1\"\nautoscaling.knative.dev/maxScale: \"3\"\nrun.googleapis.com/startup-cpu-boost: \"true\"\nexample.com/anything: whatever\n",
    ));
    assert_refused(
        &with_annotations("autoscaling.knative.dev/window: \"5s\"\n"),
        "spec.template.metadata.annotations.autoscaling.knative.dev/window",
        "out of range",
    );
    assert_refused(
        &with_annotations("autoscaling.knative.dev/minscale: \"1\"\n"),
        "spec.template.metadata.annotations.autoscaling.knative.dev/minscale",
        "did you mean",
    );
    assert_refused(
        &with_annotations("skiff.dev/unknown: x\n"),
        "spec.template.metadata.annotations.skiff.dev/unknown",
        "unknown skiff annotation",
    );
    assert_accepted(&with_annotations(
        "skiff.dev/egress: \"api.example.test, db.test:5432, 10.0.0.0/8\"\n",
    ));
    assert_accepted(&with_annotations("skiff.dev/egress: none\n"));
    assert_refused(
        &with_annotations("skiff.dev/egress: \"none, api.example.test\"\n"),
        "spec.template.metadata.annotations.skiff.dev/egress",
        "stands alone",
    );
    assert_refused(
        &with_annotations("skiff.dev/egress: \"api.example.test:http\"\n"),
        "spec.template.metadata.annotations.skiff.dev/egress",
        "port",
    );
    let on_service = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\n  annotations: {skiff.dev/egress: all}\nspec: {template: {spec: {containers: [{image: nginx}]}}}\n";
    assert_refused(
        on_service,
        "metadata.annotations.skiff.dev/egress",
        "revision template",
    );
    assert_refused(
        &with_annotations("autoscaling.knative.dev/min-scale: 1\n"),
        "spec.template.metadata.annotations.autoscaling.knative.dev/min-scale",
        "must be a string",
    );
    assert_refused(
        &with_annotations("\"bad key!\": x\n"),
        "spec.template.metadata.annotations.bad key!",
        "invalid annotation key",
    );
}

/// Settings skiff accepts but that change nothing here come back as warnings naming the
/// field; the rest of Knative's burst capacity values (-1) need none.
#[test]
fn warnings_for_settings_without_effect() {
    let warnings = |yaml: &str| -> Vec<String> {
        let input = parse_services(yaml).expect("parses");
        let (_, result) = &input.documents[0];
        result.as_ref().expect("accepted").warnings()
    };
    let w = warnings(&with_annotations(
        "autoscaling.knative.dev/target-burst-capacity: \"200\"\n",
    ));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "spec.template.metadata.annotations.autoscaling.knative.dev/target-burst-capacity: has no effect"
        ),
        "{w:?}"
    );
    assert!(
        warnings(&with_annotations(
            "autoscaling.knative.dev/target-burst-capacity: \"-1\"\n"
        ))
        .is_empty()
    );
    assert!(
        warnings(&with_annotations(
            "autoscaling.knative.dev/target: \"10\"\n"
        ))
        .is_empty()
    );
    // A budget does what it says (alerts, then stops scale-up): no warning.
    assert!(warnings(&with_service_annotations("skiff.dev/budget: 5/day\n")).is_empty());
}

/// JSON input is read like YAML, with positions.
#[test]
fn json_input() {
    let json = r#"{"apiVersion": "serving.knative.dev/v1", "kind": "Service",
 "metadata": {"name": "j"},
 "spec": {"template": {"spec": {"containers": [{"image": "nginx", "ports": [{"name": "x"}]}]}}}}"#;
    let ps = problems(json);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].path, "spec.template.spec.containers[0].ports[0].name");
    assert_eq!(ps[0].line, Some(3));
}

/// Syntax errors refuse the whole input with a position; empty input is refused; documents
/// that are not mappings are refused.
#[test]
fn syntax_and_shape() {
    let p = parse_services("a: [1, 2\nb: 3\n").expect_err("bad yaml");
    assert_eq!(p.kind, ProblemKind::Syntax);
    assert!(p.line.is_some());
    assert!(parse_services("").is_err());
    assert!(parse_services("# only a comment\n").is_err());
    assert!(
        parse_services("metadata: {name: a, name: b}\n")
            .expect_err("duplicate")
            .message
            .contains("duplicate")
    );
    let ps = problems("- 1\n- 2\n");
    assert_eq!(ps.len(), 1);
    assert!(ps[0].message.contains("must be a mapping"));
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    assert!(
        parse_services(&deep)
            .expect_err("too deep")
            .message
            .contains("nested")
    );
}

/// Multi-document input keeps each document's result and numbers its problems.
#[test]
fn multi_document() {
    let two = format!(
        "{}---\n{}",
        with_container(""),
        with_container("ports: [{name: bad}]\n")
    );
    let input = parse_services(&two).expect("parses");
    assert_eq!(input.documents.len(), 2);
    assert!(input.documents[0].1.is_ok());
    let ps = input.problems();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].document, Some(1));
    assert_eq!(ps[0].line, Some(20));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Random bytes never panic the parser.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_services(&text);
    }

    /// Random YAML-ish text built from manifest tokens never panics.
    #[test]
    fn random_yaml_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("apiVersion: serving.knative.dev/v1\n"), Just("kind: Service\n"), Just("metadata:\n"),
        Just("  name: a\n"), Just("spec:\n"), Just("  template:\n"), Just("    spec:\n"),
        Just("      containers:\n"), Just("      - image: nginx\n"), Just("        ports: [{name: h2c}]\n"),
        Just("---\n"), Just("  traffic: [{percent: 100}]\n"), Just("&a [*a]\n"), Just("<<: *x\n"),
        Just("{"), Just("}"), Just("["), Just("]"), Just(": "), Just("- "), Just("\"\\u00"), Just("'"),
        Just("!!binary x\n"), Just("? complex\n"), Just("%YAML 1.2\n"), Just("\t"), Just("~\n"),
        "[a-zA-Z0-9_.:/-]{0,12}".prop_map(|s| Box::leak(s.into_boxed_str()) as &str),
    ], 0..60)) {
        let text: String = parts.concat();
        let _ = parse_services(&text);
    }

    /// Deep nesting and huge strings are refused or accepted, never a panic or stack overflow.
    #[test]
    fn deep_and_huge_never_panic(depth in 0usize..5000, len in 0usize..200_000, flow in any::<bool>()) {
        let text = if flow {
            format!("{}x{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            let mut s = String::new();
            for i in 0..depth.min(400) {
                s.push_str(&" ".repeat(i));
                s.push_str("k:\n");
            }
            s
        };
        let _ = parse_services(&text);
        let huge = format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {}\n", "a".repeat(len));
        let _ = parse_services(&huge);
    }
}

/// YAML 1.2 booleans only: `y`, `no`, `on` stay strings (the "Norway problem" is avoided).
#[test]
fn yaml_1_1_booleans_stay_strings() {
    assert_accepted(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: y}\nspec: {template: {spec: {containers: [{image: nginx, env: [{name: A, value: no}, {name: B, value: on}]}]}}}\n",
    );
    assert_refused(
        &with_container("env:\n- name: A\n  value: true\n"),
        "spec.template.spec.containers[0].env[0].value",
        "must be a string",
    );
}

/// Knative's progress deadline: a Go duration from 1s to 1h.
#[test]
fn progress_deadline_annotation() {
    let key = "serving.knative.dev/progress-deadline";
    assert_accepted(&with_annotations(&format!("{key}: 30s\n")));
    let path = format!("spec.template.metadata.annotations.{key}");
    for (value, says) in [
        ("soon", "duration"),
        ("0s", "out of range"),
        ("2h", "out of range"),
    ] {
        assert_refused(&with_annotations(&format!("{key}: {value}\n")), &path, says);
    }
}

/// Secret and ConfigMap references in env and envFrom are accepted; a reference without a
/// name or key, or with a key Kubernetes would refuse, is not.
#[test]
fn secret_and_config_map_references() {
    let c = "spec.template.spec.containers[0]";
    assert_accepted(&with_container(
        "env:\n- name: A\n  valueFrom:\n    secretKeyRef: {name: s, key: k, optional: true}\n- name: B\n  valueFrom:\n    configMapKeyRef: {name: c, key: k.x}\nenvFrom:\n- secretRef: {name: s}\n  prefix: S_\n- configMapRef: {name: c, optional: true}\n",
    ));
    assert_refused(
        &with_container("env:\n- name: A\n  valueFrom:\n    secretKeyRef: {name: s}\n"),
        &format!("{c}.env[0].valueFrom.secretKeyRef.key"),
        "required",
    );
    assert_refused(
        &with_container(
            "env:\n- name: A\n  valueFrom:\n    configMapKeyRef: {name: c, key: a/b}\n",
        ),
        &format!("{c}.env[0].valueFrom.configMapKeyRef.key"),
        "[-._a-zA-Z0-9]+",
    );
    assert_refused(
        &with_container("envFrom:\n- secretRef: {optional: true}\n"),
        &format!("{c}.envFrom[0].secretRef.name"),
        "required",
    );
    assert_refused(
        &with_container(
            "env:\n- name: A\n  valueFrom:\n    secretKeyRef: {name: s, key: k, optinal: true}\n",
        ),
        &format!("{c}.env[0].valueFrom.secretKeyRef.optinal"),
        "did you mean `optional`",
    );
}

/// Secrets and ConfigMaps share files with Services; each document is read by its kind, and
/// problems name their path (never a value).
#[test]
fn secrets_and_config_maps_in_multi_document_files() {
    use skiff_api::manifest::parse_objects;
    let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: ns}\ndata: {a: '1'}\n---\n".to_owned()
        + &with_container("");
    let input = parse_objects(&text).expect("parses");
    assert!(input.problems().is_empty(), "{:?}", input.problems());
    let kinds: Vec<&str> = input
        .documents
        .iter()
        .map(|(_, r)| r.as_ref().expect("valid").kind())
        .collect();
    assert_eq!(kinds, ["Secret", "ConfigMap", "Service"]);

    let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, uid: x}\ntpye: Opaque\ndata:\n  password: 'not base64 hunter2!'\n  a/b: eA==\n";
    let input = parse_objects(bad).expect("parses");
    let problems = input.problems();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["tpye", "data.password", "data.a/b"], "{problems:?}");
    assert!(problems[0].message.contains("did you mean `type`"));
    assert_eq!(problems[1].line, Some(6));
    for p in &problems {
        assert!(!p.message.contains("hunter2"), "{p}");
    }
}

/// Secret, configMap and projected volumes: items with relative paths and modes, mounted
/// read-only; each problem at its path.
#[test]
fn secret_and_config_map_volumes() {
    let c = "spec.template.spec.containers[0]";
    let v = "spec.template.spec.volumes[0]";
    let mount = "volumeMounts:\n- {name: v, mountPath: /etc/v, readOnly: true}\n";
    let full = |vol: &str| {
        format!(
            "{}      volumes:\n{}",
            with_container(mount),
            indent(vol, 6)
        )
    };
    assert_accepted(&full(
        "- name: v\n  secret:\n    secretName: s\n    defaultMode: 0o400\n    items: [{key: a, path: x/a, mode: 288}]\n",
    ));
    assert_accepted(&full("- name: v\n  configMap: {name: c, optional: true}\n"));
    assert_accepted(&full(
        "- name: v\n  projected:\n    sources:\n    - secret: {name: s}\n    - configMap: {name: c, items: [{key: k, path: k2}]}\n",
    ));
    assert_refused(
        &full("- name: v\n  secret:\n    secretName: s\n    items: [{key: a, path: ../x}]\n"),
        &format!("{v}.secret.items[0].path"),
        "must not contain `..`",
    );
    assert_refused(
        &full("- name: v\n  secret:\n    secretName: s\n    items: [{key: a, path: /abs}]\n"),
        &format!("{v}.secret.items[0].path"),
        "relative",
    );
    assert_refused(
        &full("- name: v\n  secret: {secretName: s, defaultMode: 4095}\n"),
        &format!("{v}.secret.defaultMode"),
        "file mode",
    );
    assert_refused(
        &full("- name: v\n  projected:\n    sources:\n    - downwardAPI: {}\n"),
        &format!("{v}.projected.sources[0].downwardAPI"),
        "not supported by skiff yet",
    );
    let rw = format!(
        "{}      volumes:\n      - name: v\n        secret: {{secretName: s}}\n",
        with_container("volumeMounts:\n- {name: v, mountPath: /etc/v}\n")
    );
    assert_refused(
        &rw,
        &format!("{c}.volumeMounts[0].readOnly"),
        "must be true",
    );
}
