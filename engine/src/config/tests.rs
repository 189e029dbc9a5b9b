use super::*;
use crate::hash::Algorithm;

fn ctx() -> ParseContext {
    ParseContext {
        root: None,
        hostname: "node-a".into(),
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.conf", &ctx())
}

fn attrs_for(cfg: &Config, path: &str, ftype: FileType) -> Option<AttrSet> {
    cfg.rules
        .select(path.as_bytes(), ftype)
        .map(|i| cfg.rules.get(i).attrs)
}

#[test]
fn groups_options_and_rules() {
    let cfg = parse(
        "database_in=file:/var/lib/aide/aide.db\n\
         gzip_dbout=yes\n\
         # comment\n\
         MyGroup = p+u+g+sha512\n\
         Less = MyGroup-u\n\
         /etc MyGroup\n\
         /var/lib Less\n\
         !/etc/shadow$\n",
    )
    .unwrap();
    assert_eq!(cfg.options["gzip_dbout"], "yes");
    let etc = attrs_for(&cfg, "/etc/passwd", FileType::Regular).unwrap();
    assert!(etc.contains(AttrSet::UID) && etc.contains(AttrSet::hash(Algorithm::Sha512)));
    let lib = attrs_for(&cfg, "/var/lib/x", FileType::Regular).unwrap();
    assert!(!lib.contains(AttrSet::UID) && lib.contains(AttrSet::PERM));
    assert!(attrs_for(&cfg, "/etc/shadow", FileType::Regular).is_none());
}

#[test]
fn errors_name_the_file_and_line() {
    let cases = [
        (
            "/etc p+u\n/usr p+nosuch\n",
            "test.conf:2",
            "unknown attribute or group 'nosuch'",
        ),
        (
            "/etc p\n\n/usr rmd160\n",
            "test.conf:3",
            "hash 'rmd160' is not supported",
        ),
        (
            "/etc/( p\n",
            "test.conf:1",
            "invalid regular expression '/etc/('",
        ),
        ("/etc\n", "test.conf:1", "has no attributes"),
        ("etc p\n", "test.conf:1", "cannot parse 'etc p'"),
        ("/etc x,y p\n", "test.conf:1", "unknown file type"),
        ("/etc p\n@@endif\n", "test.conf:2", "@@endif without @@if"),
        (
            "@@frobnicate x\n/etc p\n",
            "test.conf:1",
            "unknown macro @@frobnicate",
        ),
        (
            "/etc p\n@@if nonsense X\n@@endif\n",
            "test.conf:2",
            "unknown @@if operator 'nonsense'",
        ),
        (
            "bad-option = 1\n/etc p\n",
            "test.conf:1",
            "unknown option 'bad-option'",
        ),
        (
            "/etc p\nUnknownGroup = p+nothing\n",
            "test.conf:2",
            "unknown attribute or group 'nothing'",
        ),
        ("/etc p\nR = p\n", "test.conf:2", "cannot be redefined"),
        ("/etc p+\n", "test.conf:1", "empty term"),
        ("!/etc p+u\n", "test.conf:1", "unknown file type 'p+u'"),
    ];
    for (text, origin, message) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with(origin), "{text:?}: {err}");
        assert!(err.contains(message), "{text:?}: {err}");
    }
    assert!(matches!(parse("!/proc\n"), Err(ConfigError::NoRules)));
    assert!(matches!(
        parse("@@ifdef X\n/etc p\n"),
        Err(ConfigError::UnclosedIf { .. })
    ));
}

#[test]
fn macros_and_conditionals() {
    let text = "@@define BASE /srv\n\
                @@define ATTRS p+sha256\n\
                @@{BASE}/app @@{ATTRS}\n\
                @@ifdef MISSING\n/never p\n@@else\n/always p\n@@endif\n\
                @@if hostname node-a\n/host-a p\n@@endif\n\
                @@ifnhost node-a\n/not-a p\n@@endif\n\
                @@if not defined BASE\n/nobase p\n@@else\n@@if defined ATTRS\n/nested p\n@@endif\n@@endif\n\
                @@undef BASE\n@@ifdef BASE\n/undefined p\n@@endif\n\
                /@@{HOSTNAME}-dir p\n";
    let cfg = parse(text).unwrap();
    let sel = |p: &str| attrs_for(&cfg, p, FileType::Regular).is_some();
    assert!(sel("/srv/app/x"));
    assert!(
        attrs_for(&cfg, "/srv/app/x", FileType::Regular)
            .unwrap()
            .contains(AttrSet::hash(Algorithm::Sha256))
    );
    assert!(sel("/always") && !sel("/never"));
    assert!(sel("/host-a") && !sel("/not-a"));
    assert!(sel("/nested") && !sel("/nobase"));
    assert!(!sel("/undefined"));
    assert!(sel("/node-a-dir"));
}

#[test]
fn exists_condition_looks_under_the_root() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc/ssh")).unwrap();
    let ctx = ParseContext {
        root: Some(root.path().into()),
        hostname: "n".into(),
    };
    let cfg = Config::parse(
        "@@if exists /etc/ssh\n/etc/ssh p\n@@endif\n@@if exists /nope\n/nope p\n@@endif\n",
        "t",
        &ctx,
    )
    .unwrap();
    assert!(cfg.rules.select(b"/etc/ssh/x", FileType::Regular).is_some());
    assert!(cfg.rules.select(b"/nope", FileType::Regular).is_none());
}

#[test]
fn escapes_restrictions_and_percent_encoding() {
    let cfg = parse(
        "/data/with\\ space f p\n\
         /data/pct%20x 0 u\n\
         =/eq/ d,f g\n\
         /logs/.*\\\\.log$ f s\n",
    )
    .unwrap();
    assert!(attrs_for(&cfg, "/data/with space", FileType::Regular).is_some());
    assert!(attrs_for(&cfg, "/data/with space", FileType::Directory).is_none());
    assert!(attrs_for(&cfg, "/data/pct x", FileType::Symlink).is_some());
    assert!(attrs_for(&cfg, "/eq/file", FileType::Regular).is_some());
    assert!(attrs_for(&cfg, "/eq/file", FileType::Symlink).is_none());
    assert!(attrs_for(&cfg, "/eq/dir/deeper", FileType::Regular).is_none());
    assert!(attrs_for(&cfg, "/logs/a.log", FileType::Regular).is_some());
    assert!(attrs_for(&cfg, "/logs/a_log", FileType::Regular).is_none());
}

/// file-integrity-operator's default aide.conf (as shipped for RHCOS), paths under /hostroot.
const FIO_DEFAULT: &str = r#"@@define DBDIR /hostroot/etc/kubernetes
@@define LOGDIR /hostroot/etc/kubernetes
database=file:@@{DBDIR}/aide.db.gz
database_out=file:@@{DBDIR}/aide.db.gz.new
gzip_dbout=yes
verbose=5
report_url=file:@@{LOGDIR}/aide.log
report_url=stdout
PERMS = p+u+g+acl+selinux+xattrs
CONTENT_EX = sha512+ftype+p+u+g+n+acl+selinux+xattrs

/hostroot/boot/        CONTENT_EX
/hostroot/root/\..* PERMS
/hostroot/root/   CONTENT_EX
!/hostroot/usr/src/
!/hostroot/usr/tmp/

/hostroot/usr/    CONTENT_EX

# OpenShift specific excludes
!/hostroot/opt/
!/hostroot/var
!/hostroot/etc/NetworkManager/system-connections/
!/hostroot/etc/mtab$
!/hostroot/etc/.*~
!/hostroot/etc/kubernetes/static-pod-resources
!/hostroot/etc/kubernetes/aide.*
!/hostroot/etc/kubernetes/manifests
!/hostroot/etc/kubernetes/kubelet-ca.crt
!/hostroot/etc/docker/certs.d
!/hostroot/etc/selinux/targeted
!/hostroot/etc/openvswitch/conf.db
!/hostroot/etc/kubernetes/cni/net.d
!/hostroot/etc/kubernetes/cni/net.d/*
!/hostroot/etc/machine-config-daemon/currentconfig$
!/hostroot/etc/pki/ca-trust/extracted/java/cacerts$
!/hostroot/etc/cvo/updatepayloads
!/hostroot/etc/cni/multus/certs
!/hostroot/etc/kubernetes/compliance-operator
!/hostroot/etc/kubernetes/node-feature-discovery

# Catch everything else in /etc
/hostroot/etc/    CONTENT_EX
"#;

#[test]
fn file_integrity_operator_default_config_parses() {
    let cfg = parse(FIO_DEFAULT).unwrap();
    assert_eq!(
        cfg.options["database"],
        "file:/hostroot/etc/kubernetes/aide.db.gz"
    );
    let content = attrs_for(&cfg, "/hostroot/etc/passwd", FileType::Regular).unwrap();
    assert!(content.contains(AttrSet::hash(Algorithm::Sha512)));
    assert!(
        attrs_for(
            &cfg,
            "/hostroot/etc/kubernetes/aide.db.gz",
            FileType::Regular
        )
        .is_none()
    );
    assert!(
        attrs_for(
            &cfg,
            "/hostroot/etc/kubernetes/manifests",
            FileType::Directory
        )
        .is_none()
    );
    let dot = attrs_for(&cfg, "/hostroot/root/.bashrc", FileType::Regular).unwrap();
    assert!(!dot.has_hashes(), "dot files in /root only get PERMS");
    assert!(attrs_for(&cfg, "/hostroot/var/log/x", FileType::Regular).is_none());
}

#[test]
fn shipped_default_covers_boot_etc_usr_root_but_not_runtime_paths() {
    let cfg = Config::default_rules(&ctx());
    for p in [
        "/boot/vmlinuz",
        "/etc/passwd",
        "/usr/bin/ls",
        "/root/notes",
        "/etc/hosts",
    ] {
        assert!(
            attrs_for(&cfg, p, FileType::Regular).is_some(),
            "{p} not selected"
        );
    }
    for p in [
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "/etc/cni/net.d/10-flannel.conflist",
        "/var/lib/kubelet/x",
        "/etc/resolv.conf",
        "/proc/1/status",
    ] {
        assert!(
            cfg.rules
                .select_with_parents(p.as_bytes(), FileType::Regular)
                .is_none(),
            "{p} selected"
        );
    }
}

/// Debian's own /etc/aide/aide.conf (aide-common): every non-executable include parses; the
/// executable ones are refused by name because kube-fim never runs configuration scripts.
#[test]
fn debian_aide_conf_parses_or_names_what_is_refused() {
    let conf = Path::new("/etc/aide/aide.conf");
    assert!(
        conf.exists(),
        "Debian's aide-common is required for this test (make test installs it)"
    );
    let err = Config::from_file(conf, &ctx()).unwrap_err().to_string();
    assert!(err.starts_with("/etc/aide/aide.conf:"), "{err}");
    assert!(
        err.contains("@@x_include of executable /etc/aide/aide.conf.d/"),
        "{err}"
    );
    assert!(err.contains("never runs configuration scripts"), "{err}");

    // The same config with the scripts left out: the top file and all static snippets parse.
    let dir = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in fs::read_dir("/etc/aide/aide.conf.d").unwrap() {
        let entry = entry.unwrap();
        if entry.metadata().unwrap().permissions().mode() & 0o111 == 0 {
            fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            copied += 1;
        }
    }
    assert!(
        copied > 100,
        "expected Debian's many snippets, found {copied}"
    );
    let top = fs::read_to_string(conf)
        .unwrap()
        .replace("/etc/aide/aide.conf.d", &dir.path().display().to_string());
    let cfg = Config::parse(&top, "aide.conf", &ctx()).unwrap();
    assert!(cfg.rules.len() > 500, "only {} rules", cfg.rules.len());
    assert!(cfg.groups.contains_key("VarFile"));
    // Debian's snippets exclude /proc and select /etc with its Full group (hashes H).
    assert!(cfg.rules.select(b"/proc", FileType::Directory).is_none());
    let etc = attrs_for(&cfg, "/etc/passwd", FileType::Regular).unwrap();
    assert!(etc.has_hashes());
}

// Hostile configs: whoever may write a FileIntegrity's rules must not hurt the operator or an
// agent, nor make either leak what it can read.

/// A file only the parsing process can read, standing in for a service-account token.
const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQtb2YtdGhlLXRva2Vu.c2lnbmF0dXJl";

fn secret_file(dir: &Path, content: &str) -> PathBuf {
    let path = dir.join("token");
    fs::write(&path, content).unwrap();
    path
}

#[test]
fn cluster_modes_refuse_includes_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), SECRET);
    for word in ["include", "x_include"] {
        let text = format!("/etc p\n@@{word} {}\n", token.display());
        for mode in [Mode::Operator, Mode::Node] {
            let err = Config::parse_in(&text, "aide.conf", &ctx(), mode)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("aide.conf:2: "), "{err}");
            assert!(err.contains(&format!("@@{word} is not allowed")), "{err}");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }
}

#[test]
fn the_operator_never_looks_at_its_filesystem_for_exists() {
    // `/` exists everywhere: in the operator the condition is deferred (false), on a node it is
    // evaluated under the root.
    let text = "@@if exists /\n/then p\n@@else\n/else p\n@@endif\n";
    let op = Config::parse_in(text, "t", &ctx(), Mode::Operator).unwrap();
    assert!(attrs_for(&op, "/else", FileType::Regular).is_some());
    assert!(attrs_for(&op, "/then", FileType::Regular).is_none());
    let node = Config::parse_in(text, "t", &ctx(), Mode::Node).unwrap();
    assert!(attrs_for(&node, "/then", FileType::Regular).is_some());
}

#[test]
fn included_content_is_never_quoted_beyond_a_short_excerpt() {
    let dir = tempfile::tempdir().unwrap();
    // The secret as a bare line, as a rule's regex, as attributes, as a group, and shaped to
    // confuse the quote finder.
    let shapes = [
        SECRET.to_string(),
        format!("/{SECRET}( p"),
        format!("/etc {SECRET}"),
        format!("G = {SECRET}"),
        format!("x': {SECRET}"),
        format!("!/x {SECRET}"),
        format!("@@if {SECRET}"),
        format!("@@{SECRET}"),
    ];
    for content in shapes {
        let token = secret_file(dir.path(), &format!("{content}\n"));
        let text = format!("/etc p\n@@include {}\n", token.display());
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("token:1"), "{content}: {err}");
        let chars: Vec<char> = SECRET.chars().collect();
        for w in chars.windows(QUOTE_INCLUDED + 1) {
            let piece: String = w.iter().collect();
            assert!(!err.contains(&piece), "{content}: leaks '{piece}': {err}");
        }
    }
}

#[test]
fn quoted_config_text_is_cut_short() {
    let long = format!("/etc {}", "x".repeat(100_000));
    let err = parse(&long).unwrap_err().to_string();
    assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..400]);
    assert!(err.contains("unknown attribute or group 'xxxx"), "{err}");
}

#[test]
fn define_expansion_is_bounded() {
    // Each define doubles the previous one: 2^60 bytes without a bound.
    let mut text = String::from("@@define A 0123456789abcdef\n");
    for _ in 0..60 {
        text.push_str("@@define A @@{A}@@{A}\n");
    }
    text.push_str("/etc p\n");
    let started = std::time::Instant::now();
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("macro expansion"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // Many lines each expanding a large value: bounded in total.
    let mut text = format!("@@define B /{}\n", "b".repeat(60_000));
    for _ in 0..200 {
        text.push_str("@@define C @@{B}\n");
    }
    text.push_str("/etc p\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("in total"), "{err}");
}

#[test]
fn input_size_is_bounded() {
    let text = format!(
        "/etc p\n{}",
        "# padding\n".repeat(MAX_CONFIG_BYTES / 10 + 1)
    );
    let err = Config::parse_in(&text, "t", &ctx(), Mode::Operator).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");

    // An included file counts too.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.conf");
    fs::write(&big, "# x\n".repeat(MAX_CONFIG_BYTES / 4 + 1)).unwrap();
    let err = parse(&format!("/etc p\n@@include {}\n", big.display())).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

#[test]
fn regex_size_is_bounded() {
    // Compiles with the regex crate's default limit, but not within kube-fim's.
    let pattern = "/x{200000}";
    assert!(regex::bytes::Regex::new(pattern).is_ok());
    let err = parse(&format!("{pattern} p\n")).unwrap_err().to_string();
    assert!(
        err.starts_with("test.conf:1: invalid regular expression"),
        "{err}"
    );
}
