//! The deploy files, checked without a container engine (none runs on these machines): the
//! Compose file rendered by `docker-compose config`, every Kubernetes overlay rendered by
//! `kubectl kustomize` and validated by kubernetes-validate (PyPI) against a recent
//! Kubernetes, and both held to the programs of `shop::PROGRAMS`: each has its container,
//! its healthcheck or probes on the paths it serves, waits for healthy servers, and sets only
//! settings `shop --help` knows.
//!
//! Needs `docker-compose` (Debian's package; scripts/test installs it) and `kubectl` with
//! kustomize; kubernetes-validate is installed into `target/deploy-venv` on first use.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory as _;
use serde_norway::Value;
use shop::{PROGRAMS, cli::Cli};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cmd`'s standard output; fails the test with its error output, or with how to get the
/// tool when it is missing.
fn output(cmd: &mut Command, tool: &str, install: &str) -> String {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed to check the deploy files ({install}): {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every `SHOP_*` variable `shop --help` documents, and the `OTEL_*` ones tracing reads.
fn known_variables() -> BTreeSet<String> {
    let help = Cli::command().render_long_help().to_string();
    let mut known = BTreeSet::new();
    for part in help.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        known.insert(name);
    }
    // Read from the environment directly, not flags (docs/architecture.md, section 8).
    known.extend(["SHOP_LOG".to_string(), "SHOP_CRASH_POINT".to_string()]);
    // The standard OpenTelemetry variables (docs/architecture.md, section 10).
    known.extend(
        shop_platform::telemetry::OTEL_VARIABLES
            .iter()
            .map(|v| v.to_string()),
    );
    assert!(known.contains("SHOP_AMQP_URL"), "{help}");
    known
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn the_compose_file_runs_every_program_after_its_servers_with_healthchecks() {
    let rendered = output(
        Command::new("docker-compose").args([
            "--env-file",
            "deploy/.env.example",
            "-f",
            "deploy/docker-compose.yml",
            "--profile",
            "observability",
            "config",
        ]),
        "docker-compose",
        "apt-get install docker-compose",
    );
    let doc: Value = serde_norway::from_str(&rendered).expect("docker-compose config is YAML");
    let services = &doc["services"];
    let known = known_variables();
    let servers = ["rabbitmq", "redis", "redis-cache", "postgres"];
    for server in servers {
        assert!(
            services[server]["healthcheck"]["test"].is_sequence(),
            "server {server} has a healthcheck"
        );
    }
    assert_eq!(
        str_of(&services["redis"]["command"][4]),
        "noeviction",
        "sessions are never evicted"
    );
    let cache: Vec<String> = services["redis-cache"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(cache.contains(&"allkeys-lru".into()) && cache.contains(&"--maxmemory".into()));
    for e in PROGRAMS {
        let name = e.identity.name;
        let svc = &services[name];
        assert!(svc.is_mapping(), "a service for {name}");
        let command: Vec<String> = svc["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has a command"))
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(command, ["run", name]);
        let test: Vec<String> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has a healthcheck"))
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(
            test,
            [
                "CMD".to_string(),
                "shop".into(),
                "health".into(),
                format!("http://127.0.0.1:{}/health/ready", e.identity.default_port)
            ],
            "{name}'s healthcheck asks its own readiness with the shop binary"
        );
        let depends = svc["depends_on"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} waits for something"));
        for (dep, how) in depends {
            let condition = str_of(&how["condition"]);
            let dep = str_of(dep);
            let expected = if dep == "migrate" {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            assert_eq!(condition, expected, "{name} waits for {dep}");
        }
        let waits_for: BTreeSet<String> = depends.keys().map(str_of).collect();
        if name == "gateway" {
            for other in PROGRAMS.iter().filter(|o| o.identity.name != "gateway") {
                assert!(
                    waits_for.contains(other.identity.name),
                    "gateway waits for {}",
                    other.identity.name
                );
            }
        } else {
            for dep in servers.iter().chain(&["migrate"]) {
                assert!(waits_for.contains(*dep), "{name} waits for {dep}");
            }
        }
        for key in svc["environment"].as_mapping().unwrap().keys() {
            let key = str_of(key);
            if key.starts_with("SHOP_") {
                assert!(
                    known.contains(&key),
                    "{name} sets {key}, which `shop --help` does not know"
                );
            }
        }
    }
    for saga in ["inventory", "orders", "payments"] {
        assert_eq!(
            str_of(get(services, &[saga, "deploy", "replicas"])),
            "2",
            "{saga} runs twice"
        );
    }
    assert!(
        doc["volumes"]["pgdata"].is_mapping(),
        "a volume for PostgreSQL"
    );
    let mounts = format!("{:?}", services["postgres"]["volumes"]);
    assert!(
        mounts.contains("pgdata") && mounts.contains("/var/lib/postgresql/data"),
        "PostgreSQL keeps its data on the volume: {mounts}"
    );
    for extra in ["prometheus", "grafana", "jaeger", "otel-collector"] {
        let profiles: Vec<String> = services[extra]["profiles"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{extra} in a profile"))
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(profiles, ["observability"]);
    }
}

#[test]
fn the_env_example_names_every_variable_the_compose_file_requires() {
    let compose = std::fs::read_to_string(root().join("deploy/docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(root().join("deploy/.env.example")).unwrap();
    let defined: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for part in compose.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            defined.contains(name.as_str()),
            "deploy/.env.example lacks {name}"
        );
    }
}

/// The YAML documents of `kubectl kustomize <dir>`.
fn kustomize(dir: &Path) -> (String, Vec<Value>) {
    let rendered = output(
        Command::new("kubectl")
            .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
            .arg(dir),
        "kubectl",
        "kubectl 1.32 with kustomize 5.5",
    );
    let docs = serde_norway::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).expect("kustomize prints YAML"))
        .collect();
    (rendered, docs)
}

/// `kind/name` -> object.
fn by_kind_and_name(docs: &[Value]) -> BTreeMap<String, Value> {
    docs.iter()
        .map(|d| {
            (
                format!("{}/{}", str_of(&d["kind"]), str_of(&d["metadata"]["name"])),
                d.clone(),
            )
        })
        .collect()
}

/// Validates rendered objects with kubernetes-validate (strict: unknown fields are errors);
/// custom resources, whose schemas it lacks, are only warned about.
fn validate(rendered: &str, what: &str) {
    let python = shop_platform::testkit::python_with(
        "deploy-venv",
        "kubernetes-validate==1.37.0",
        "kubernetes_validate",
    );
    let file = root().join(format!("target/k8s-{what}.yaml"));
    std::fs::write(&file, rendered).unwrap();
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("running kubernetes-validate");
    assert!(
        out.status.success(),
        "{what} does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_kubernetes_overlay_renders_validates_and_runs_every_program_safely() {
    let known = known_variables();
    let keda = root().join("target/k8s-prod-keda");
    std::fs::create_dir_all(&keda).unwrap();
    std::fs::write(
        keda.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy/k8s/overlays/prod]\ncomponents: [../../deploy/k8s/components/keda]\n",
    )
    .unwrap();
    for (what, dir) in [
        ("dev", root().join("deploy/k8s/overlays/dev")),
        ("prod", root().join("deploy/k8s/overlays/prod")),
        ("prod-keda", keda),
    ] {
        let (rendered, docs) = kustomize(&dir);
        validate(&rendered, what);
        let objects = by_kind_and_name(&docs);
        let has = |k: &str| objects.contains_key(k);
        for k in [
            "RabbitmqCluster/shop-rabbitmq",
            "Cluster/shop-postgres",
            "Deployment/shop-redis",
            "Deployment/shop-redis-cache",
            "Job/shop-migrate",
            "ConfigMap/shop-config",
            "NetworkPolicy/default-deny-ingress",
        ] {
            assert!(has(k), "{what}: {k}");
        }
        let config = &objects["ConfigMap/shop-config"]["data"];
        for key in config.as_mapping().unwrap().keys() {
            assert!(
                known.contains(&str_of(key)),
                "{what}: the ConfigMap sets unknown {key:?}"
            );
        }
        let urls = str_of(&config["SHOP_SERVICE_URLS"]);
        for e in PROGRAMS {
            let (name, port) = (e.identity.name, e.identity.default_port);
            let id = format!("shop-{name}");
            if name != "gateway" {
                assert!(
                    urls.contains(&format!("{name}=http://{id}:{port}")),
                    "{what}: {urls}"
                );
            }
            for kind in ["ServiceAccount", "Service", "PodDisruptionBudget"] {
                assert!(has(&format!("{kind}/{id}")), "{what}: {kind} of {name}");
            }
            let scaled = has(&format!("ScaledObject/{id}"));
            assert!(
                has(&format!("HorizontalPodAutoscaler/{id}")) != scaled,
                "{what}: {name} is scaled by one autoscaler"
            );
            let d = &objects[&format!("Deployment/{id}")];
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(str_of(&pod["serviceAccountName"]), id);
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"],
                Value::Bool(true),
                "{what}: {name}"
            );
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            // The preStop pause (5 s), the drain and the graceful stop must fit.
            let config = shop_platform::config::Config::defaults();
            let stop = 5 + config.drain().as_secs() + config.shutdown_timeout_secs;
            assert!(
                grace > stop,
                "{what}: {name} has {grace} s to stop, needs {stop}"
            );
            let c = &pod["containers"][0];
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(str_of)
                .collect();
            assert_eq!(args, ["run", name], "{what}");
            let http = c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "http")
                .unwrap_or_else(|| panic!("{what}: {name} names its port http"));
            assert_eq!(
                http["containerPort"].as_u64(),
                Some(u64::from(port)),
                "{what}: {name}"
            );
            for (probe, path) in [
                ("startupProbe", "/health/live"),
                ("livenessProbe", "/health/live"),
                ("readinessProbe", "/health/ready"),
            ] {
                let get = &c[probe]["httpGet"];
                assert_eq!(
                    (str_of(&get["path"]), str_of(&get["port"])),
                    (path.to_string(), "http".to_string()),
                    "{what}: {name} {probe}"
                );
            }
            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"],
                Value::Bool(true),
                "{what}: {name}"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"],
                Value::Bool(false),
                "{what}: {name}"
            );
            assert_eq!(
                str_of(&sc["capabilities"]["drop"][0]),
                "ALL",
                "{what}: {name}"
            );
            for r in ["requests", "limits"] {
                assert!(
                    c["resources"][r]["memory"].is_string(),
                    "{what}: {name} {r}"
                );
            }
            for env in c["env"].as_sequence().unwrap() {
                let key = str_of(&env["name"]);
                if key.starts_with("SHOP_") {
                    assert!(known.contains(&key), "{what}: {name} sets unknown {key}");
                }
            }
        }
    }
}
