//! The deployment files in `docker/`, checked without a container engine (none runs in CI):
//! every YAML document parses; the configs the compose file mounts and the ConfigMap holds
//! load with scopegate's own loader; ports, probe paths and mount paths agree with those
//! configs; the Dockerfile's runtime stage is non-root and its ENTRYPOINT + CMD start the real
//! binary, which then answers the compose healthcheck. What cannot be checked here (the image
//! builds, the base image tags exist, GitLab starts, Kubernetes accepts the manifests) is said
//! in the README's Deployment section.

mod process;

use process::{Proc, BIN};
use scopegate::config::Config;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn read(name: &str) -> String {
    let path = docker_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document in a file (`---`-separated).
fn documents(name: &str) -> Vec<Value> {
    let text = read(name);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("docker/{name} does not parse: {e}"))
        })
        .collect()
}

/// `v[k1][k2]…`, panicking with the path when a key is missing.
fn at<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().fold(v, |v, k| {
        v.get(*k)
            .unwrap_or_else(|| panic!("no `{}` in {v:?}", keys.join(".")))
    })
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    at(v, keys)
        .as_str()
        .unwrap_or_else(|| panic!("`{}` is not a string", keys.join(".")))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// Loads YAML text with the crate's loader, through a file as `scopegate run` would.
fn load_config(yaml: &str, what: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write config");
    Config::load(&path).unwrap_or_else(|e| panic!("{what} is not a valid scopegate config: {e}"))
}

fn admin_port(config: &Config) -> u16 {
    config
        .admin
        .as_ref()
        .expect("an admin listener")
        .listen
        .port()
}

/// A container gateway must listen on all interfaces: a published port or a pod IP is not
/// loopback.
fn assert_reachable(addr: SocketAddr, what: &str) {
    assert!(
        addr.ip().is_unspecified(),
        "{what} listens on {addr}: unreachable from outside the container"
    );
}

// --- every document parses -----------------------------------------------------------------

#[test]
fn every_yaml_document_in_docker_parses() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(docker_dir()).expect("docker/") {
        let path = entry.expect("entry").path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("yaml" | "yml")) {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let docs = documents(name);
            assert!(!docs.is_empty(), "docker/{name} holds no document");
            for (i, d) in docs.iter().enumerate() {
                assert!(
                    d.is_mapping(),
                    "docker/{name} document {i} is not a mapping"
                );
            }
            files.push(name.to_owned());
        }
    }
    files.sort();
    assert_eq!(files, ["compose.yaml", "k8s-sidecar.yaml", "proxy.yaml"]);
    let kinds: Vec<String> = documents("k8s-sidecar.yaml")
        .iter()
        .map(|d| str_at(d, &["kind"]).to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
}

// --- compose -------------------------------------------------------------------------------

/// The config compose mounts at /etc/scopegate/proxy.yaml, and its host path.
fn compose_config() -> (Config, PathBuf) {
    let compose = &documents("compose.yaml")[0];
    let volumes = strings(at(compose, &["services", "scopegate", "volumes"]));
    let mount = volumes
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (host, container) = (parts.next()?, parts.next()?);
            (container == "/etc/scopegate/proxy.yaml").then(|| host.to_owned())
        })
        .expect("compose mounts a proxy.yaml at /etc/scopegate/proxy.yaml");
    // Compose resolves relative host paths against the compose file's directory.
    let host = docker_dir().join(&mount);
    let config = Config::load(&host)
        .unwrap_or_else(|e| panic!("the mounted {mount} is not a valid config: {e}"));
    (config, host)
}

#[test]
fn compose_puts_the_gateway_in_front_of_gitlab() {
    let compose = &documents("compose.yaml")[0];
    let (config, _) = compose_config();
    assert_reachable(config.listen, "the gateway");
    assert_reachable(
        config.admin.as_ref().expect("admin").listen,
        "the admin port",
    );

    // upstream.url names the gitlab service, on the port its nginx listens on.
    let gitlab = at(compose, &["services", "gitlab"]);
    assert!(str_at(gitlab, &["image"]).starts_with("gitlab/gitlab-ce:"));
    let upstream = &config.upstream.url;
    assert_eq!(upstream.host(), Some("gitlab"), "upstream.url: {upstream}");
    assert_eq!(upstream.port_u16(), Some(80));
    let omnibus = str_at(gitlab, &["environment", "GITLAB_OMNIBUS_CONFIG"]);
    assert!(omnibus.contains("nginx['listen_port'] = 80"), "{omnibus}");

    // GitLab's external_url is the gateway's published address, so the URLs GitLab hands
    // out (clone URLs, CI_SERVER_URL) lead back through scopegate.
    let published: Vec<String> = strings(at(compose, &["services", "scopegate", "ports"]));
    let gateway = format!("{0}:{0}", config.listen.port());
    assert!(
        published.contains(&gateway),
        "{published:?} lacks {gateway}"
    );
    let external = format!("external_url 'http://localhost:{}'", config.listen.port());
    assert!(omnibus.contains(&external), "{omnibus} lacks {external}");
    // GitLab's HTTP is not published: nothing bypasses the gateway.
    let gitlab_ports = gitlab.get("ports").map(strings).unwrap_or_default();
    assert!(
        gitlab_ports.iter().all(|p| !p.ends_with(":80")),
        "{gitlab_ports:?}"
    );

    // The image is the one the Dockerfile builds, from the repository root.
    let build = at(compose, &["services", "scopegate", "build"]);
    assert_eq!(str_at(build, &["dockerfile"]), "docker/Dockerfile");
    let context = docker_dir().join(str_at(build, &["context"]));
    assert!(context.join("Cargo.toml").is_file() && context.join(".dockerignore").is_file());
}

/// The compose healthcheck probes the admin port's /readyz.
#[test]
fn compose_healthcheck_targets_the_admin_listener() {
    let compose = &documents("compose.yaml")[0];
    let (config, _) = compose_config();
    let test = strings(at(
        compose,
        &["services", "scopegate", "healthcheck", "test"],
    ));
    assert_eq!(test[..3], ["CMD", "bash", "-c"], "{test:?}");
    let script = &test[3];
    let target = format!("/dev/tcp/127.0.0.1/{}", admin_port(&config));
    assert!(script.contains(&target), "{script} does not probe {target}");
    assert!(script.contains("GET /readyz "), "{script}");
}

// --- Kubernetes ----------------------------------------------------------------------------

struct Sidecar {
    config_map: Value,
    deployment: Value,
    service: Value,
}

fn sidecar() -> Sidecar {
    let docs = documents("k8s-sidecar.yaml");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| str_at(d, &["kind"]) == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .clone()
    };
    Sidecar {
        config_map: kind("ConfigMap"),
        deployment: kind("Deployment"),
        service: kind("Service"),
    }
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    at(deployment, &["spec", "template", "spec", "containers"])
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| str_at(c, &["name"]) == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A probe's or a Service's port: a number, or the name of one of the container's ports.
fn port_number(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).expect("a port");
    }
    let name = port.as_str().expect("a port number or name");
    at(container, &["ports"])
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| str_at(p, &["name"]) == name)
        .and_then(|p| p.get("containerPort")?.as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn k8s_configmap_holds_a_valid_config_mounted_where_the_args_point() {
    let k = sidecar();
    let yaml = str_at(&k.config_map, &["data", "proxy.yaml"]);
    let config = load_config(yaml, "the ConfigMap's proxy.yaml");
    assert_reachable(config.listen, "the gateway");
    assert_reachable(
        config.admin.as_ref().expect("admin").listen,
        "the admin port",
    );
    // The sidecar's forge is the other container of the same pod.
    let upstream = &config.upstream.url;
    assert_eq!(upstream.host(), Some("127.0.0.1"), "{upstream}");

    let gate = container(&k.deployment, "scopegate");
    let args = strings(at(gate, &["args"]));
    assert_eq!(args[..2], ["run", "--config"], "{args:?}");
    let config_path = Path::new(&args[2]);
    // The volume that holds the ConfigMap is mounted at the directory the args name.
    let volume = at(&k.deployment, &["spec", "template", "spec", "volumes"])
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| {
            v.get("configMap")
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
                == Some(str_at(&k.config_map, &["metadata", "name"]))
        })
        .expect("a volume of the ConfigMap");
    let mount = at(gate, &["volumeMounts"])
        .as_sequence()
        .expect("mounts")
        .iter()
        .find(|m| str_at(m, &["name"]) == str_at(volume, &["name"]))
        .expect("the ConfigMap's volume is mounted");
    assert_eq!(
        Path::new(str_at(mount, &["mountPath"])).join("proxy.yaml"),
        config_path
    );
    assert_eq!(at(mount, &["readOnly"]).as_bool(), Some(true));
}

#[test]
fn k8s_probes_hit_the_admin_listener_and_the_service_the_gateway() {
    let k = sidecar();
    let config = load_config(
        str_at(&k.config_map, &["data", "proxy.yaml"]),
        "the ConfigMap's proxy.yaml",
    );
    let gate = container(&k.deployment, "scopegate");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(gate, &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), path, "{probe}");
        assert_eq!(
            port_number(gate, at(get, &["port"])),
            admin_port(&config),
            "{probe} port"
        );
    }
    let ports = at(&k.service, &["spec", "ports"])
        .as_sequence()
        .expect("ports");
    assert_eq!(ports.len(), 1, "the Service exposes the gateway only");
    assert_eq!(
        port_number(gate, at(&ports[0], &["targetPort"])),
        config.listen.port(),
        "Service targetPort"
    );
    // The Service selects the pod the Deployment makes.
    assert_eq!(
        at(&k.service, &["spec", "selector"]),
        at(&k.deployment, &["spec", "template", "metadata", "labels"])
    );
    // GitLab itself listens on loopback only: the gateway is the pod's only way in.
    let omnibus = at(container(&k.deployment, "gitlab"), &["env"])
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| str_at(e, &["name"]) == "GITLAB_OMNIBUS_CONFIG")
        .map(|e| str_at(e, &["value"]).to_owned())
        .expect("GITLAB_OMNIBUS_CONFIG");
    assert!(omnibus.contains("nginx['listen_addresses'] = ['127.0.0.1']"));
    assert_eq!(config.upstream.url.port_u16(), Some(80));
    assert!(omnibus.contains("nginx['listen_port'] = 80"));
}

#[test]
fn k8s_sidecar_is_locked_down_and_bounded() {
    let k = sidecar();
    let gate = container(&k.deployment, "scopegate");
    let sc = at(gate, &["securityContext"]);
    assert_eq!(at(sc, &["runAsNonRoot"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["readOnlyRootFilesystem"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["allowPrivilegeEscalation"]).as_bool(), Some(false));
    assert_eq!(strings(at(sc, &["capabilities", "drop"])), ["ALL"]);
    let uid = at(sc, &["runAsUser"]).as_u64().expect("runAsUser");
    assert_ne!(uid, 0);
    assert_eq!(uid, u64::from(dockerfile_user().0), "the image's USER");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                at(gate, &["resources", kind]).get(resource).is_some(),
                "resources.{kind}.{resource}"
            );
        }
    }
}

// --- Dockerfile ----------------------------------------------------------------------------

/// `(instruction, arguments)` for each instruction of the Dockerfile's final stage, with
/// comments dropped and `\` continuations joined.
fn runtime_stage() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    instructions.split_off(last_from)
}

fn instruction(stage: &[(String, String)], op: &str) -> String {
    let mut found = stage.iter().filter(|(o, _)| o == op);
    let (_, args) = found
        .next()
        .unwrap_or_else(|| panic!("no {op} in the runtime stage"));
    assert!(found.next().is_none(), "{op} twice in the runtime stage");
    args.clone()
}

/// An exec-form (`["a", "b"]`) instruction's arguments.
fn exec_form(stage: &[(String, String)], op: &str) -> Vec<String> {
    let args = instruction(stage, op);
    serde_json::from_str(&args).unwrap_or_else(|e| panic!("{op} {args} is not exec form: {e}"))
}

/// The runtime stage's `USER uid:gid`.
fn dockerfile_user() -> (u32, u32) {
    let user = instruction(&runtime_stage(), "USER");
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let parse = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("USER {user}: numeric ids let runAsNonRoot verify it"))
    };
    (parse(uid), parse(gid))
}

#[test]
fn dockerfile_runtime_is_pinned_and_non_root() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().next().expect("an image");
        let (_, tag) = image.split_once(':').expect("a pinned tag");
        assert!(!tag.is_empty() && tag != "latest", "{image}");
    }
    // Builder and runtime on the same Debian release: the binary's glibc is the runtime's.
    assert!(froms[0].contains("bookworm") && froms[1].contains("bookworm"));
    assert!(text.contains("cargo build --release --locked"));

    let (uid, gid) = dockerfile_user();
    assert!(uid != 0 && gid != 0, "the runtime runs as root");
    let stage = runtime_stage();
    let exposed: Vec<u16> = instruction(&stage, "EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().expect("a port"))
        .collect();
    let (config, _) = compose_config();
    assert_eq!(exposed, [config.listen.port(), admin_port(&config)]);
    // The binary lands on the PATH the ENTRYPOINT relies on.
    assert!(stage
        .iter()
        .any(|(op, args)| op == "COPY" && args.ends_with(" /usr/local/bin/scopegate")));
}

/// The default config the image carries: the file COPY'd to the path CMD names.
fn image_config(cmd: &[String]) -> PathBuf {
    let config_path = cmd
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("CMD names --config");
    let stage = runtime_stage();
    let source = stage
        .iter()
        .filter(|(op, _)| op == "COPY")
        .find_map(|(_, args)| {
            let (src, dst) = args.rsplit_once(' ')?;
            (dst == config_path && !src.starts_with("--")).then(|| src.to_owned())
        })
        .expect("the image carries the config CMD names");
    Path::new(env!("CARGO_MANIFEST_DIR")).join(source)
}

/// ENTRYPOINT + CMD as the real binary's CLI reads them: `check` in place of `run` validates
/// the config the image carries (exit 0), and `run` itself starts serving.
#[test]
fn dockerfile_command_line_is_one_the_binary_accepts() {
    let stage = runtime_stage();
    let entrypoint = exec_form(&stage, "ENTRYPOINT");
    let cmd = exec_form(&stage, "CMD");
    assert_eq!(entrypoint, ["scopegate"]);
    assert_eq!(cmd, ["run", "--config", "/etc/scopegate/proxy.yaml"]);
    let shipped = image_config(&cmd);

    let mut check: Vec<String> = cmd.clone();
    check[0] = "check".into();
    let config_arg = check
        .iter()
        .position(|a| a == "--config")
        .expect("--config")
        + 1;
    check[config_arg] = shipped.display().to_string();
    let out = Command::new(BIN)
        .args(&check)
        .output()
        .expect("run scopegate");
    assert!(
        out.status.success(),
        "scopegate {check:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `run` takes the same `--config` (it is started for real in the next test).
    let out = Command::new(BIN)
        .args([&cmd[0], "--help"])
        .output()
        .expect("run scopegate");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

/// The admin address from the JSON `scopegate listening` line (the shipped config logs JSON).
fn admin_listening(proc: &Proc) -> SocketAddr {
    let (_, line) = proc
        .stderr
        .expect_line(0, "the `scopegate listening` line", |l| {
            l.contains("scopegate listening")
        });
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    json["fields"]["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line}"))
}

/// The image's CMD starts the real gateway on the shipped config (ports made ephemeral), and
/// the compose healthcheck, run by bash exactly as written but for the port, passes against
/// it.
#[test]
fn image_command_serves_and_passes_the_compose_healthcheck() {
    let stage = runtime_stage();
    let cmd = exec_form(&stage, "CMD");
    let (config, mounted) = compose_config();
    assert_eq!(
        std::fs::read(image_config(&cmd)).expect("image config"),
        std::fs::read(&mounted).expect("mounted config"),
        "the image's default config is the one compose mounts"
    );
    let text = std::fs::read_to_string(&mounted).expect("config");
    let ephemeral = text
        .replace(&config.listen.to_string(), "127.0.0.1:0")
        .replace(
            &config.admin.as_ref().expect("admin").listen.to_string(),
            "127.0.0.1:0",
        );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, ephemeral).expect("write");

    let mut args = cmd.clone();
    let config_arg = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[config_arg] = path.display().to_string();
    let proc = Proc::spawn(Command::new(BIN).args(&args));
    let admin = admin_listening(&proc);

    let compose = &documents("compose.yaml")[0];
    let test = strings(at(
        compose,
        &["services", "scopegate", "healthcheck", "test"],
    ));
    let script = test[3].replace(
        &format!("/dev/tcp/127.0.0.1/{}", admin_port(&config)),
        &format!("/dev/tcp/127.0.0.1/{}", admin.port()),
    );
    let status = Command::new(&test[1])
        .args([&test[2], &script])
        .status()
        .expect("run bash");
    assert!(
        status.success(),
        "the healthcheck failed against a ready gateway"
    );

    // And it fails when /readyz answers anything but 200 (a draining gateway's 503).
    let draining = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = draining.local_addr().expect("addr").port();
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = draining.accept().expect("accept");
        let mut request = [0u8; 1024];
        let n = conn.read(&mut request).expect("read");
        conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\ndraining\n")
            .expect("write");
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let wrong = test[3].replace(
        &format!("/dev/tcp/127.0.0.1/{}", admin_port(&config)),
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    let status = Command::new(&test[1])
        .args([&test[2], &wrong])
        .status()
        .expect("run bash");
    let request = answer.join().expect("the 503 server");
    assert!(
        request.starts_with("GET /readyz HTTP/1.0\r\n"),
        "{request:?}"
    );
    assert!(!status.success(), "the healthcheck passed on a 503");
}
