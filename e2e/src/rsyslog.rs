//! A real rsyslog (Debian's `rsyslogd`) in the foreground with its own configuration: TCP (plain
//! or TLS) and UDP inputs on 127.0.0.1, and a template writing, per line, rsyslog's own parse as
//! JSON: its properties, each integrity-sum `key=value` of the message (`re_extract` up to the
//! next known key) and the RFC 5424 structured data (`mmpstrucdata`). Used by the syslog suites.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// integrity-sum's fields, in order.
pub const KEYS: [&str; 10] = [
    "time",
    "event-type",
    "service",
    "pod",
    "image",
    "namespace",
    "cluster",
    "message",
    "file",
    "reason",
];

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One rsyslogd in the foreground; stopped (SIGTERM) when dropped.
pub struct Rsyslog {
    pub dir: PathBuf,
    conf: PathBuf,
    /// The TCP input's port (on 127.0.0.1 of `netns`, or of this machine).
    pub tcp: u16,
    /// Network namespace file it runs in (`None`: this process's).
    netns: Option<PathBuf>,
    child: Option<Child>,
}

/// What rsyslog parsed, as JSON: its properties, each `key=value` of the message
/// (`re_extract` up to the next known key), and the RFC 5424 structured data (`mmpstrucdata`).
fn rules(out: &Path) -> String {
    let mut extracts = String::new();
    for (i, k) in KEYS.iter().enumerate() {
        let pattern = match KEYS.get(i + 1) {
            Some(next) => format!("(^| ){k}=(.*) {next}="),
            // Greedy: to the end of the message.
            None => format!("(^| ){k}=(.*)"),
        };
        extracts.push_str(&format!(
            "  set $!kv!{k} = re_extract($msg, \"{pattern}\", 0, 2, \"<missing>\");\n"
        ));
    }
    format!(
        r#"
module(load="mmpstrucdata")
template(name="parsed" type="string" string="%$!%\n")
ruleset(name="out") {{
  action(type="mmpstrucdata")
  set $!pri = $pri;
  set $!hostname = $hostname;
  set $!programname = $programname;
  set $!procid = $procid;
  set $!msgid = $msgid;
  set $!app = $app-name;
  set $!timereported = $timereported;
  set $!msg = $msg;
{extracts}  action(type="omfile" file="{out}" template="parsed")
}}
"#,
        out = out.display()
    )
}

impl Rsyslog {
    /// rsyslog with a TCP input (plain, or TLS when `tls` holds the CA, cert and key files) and
    /// a UDP input on `udp`.
    pub fn start(tls: Option<(&Path, &Path, &Path)>, udp: Option<u16>) -> Rsyslog {
        Rsyslog::start_in(None, tls, udp)
    }

    /// Like [`Rsyslog::start`], inside the network namespace `netns` (a `/run/netns/` file):
    /// its 127.0.0.1 is that namespace's (the real node's, where hostNetwork agents send).
    pub fn start_in(
        netns: Option<&Path>,
        tls: Option<(&Path, &Path, &Path)>,
        udp: Option<u16>,
    ) -> Rsyslog {
        let dir = tempfile::Builder::new()
            .prefix("kube-fim-rsyslog")
            .tempdir()
            .unwrap()
            .keep();
        let tcp = free_port();
        let out = dir.join("parsed.json");
        let mut conf = format!(
            "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\"{tls_global})\n",
            dir = dir.display(),
            tls_global = tls.map_or(String::new(), |(ca, cert, key)| format!(
                " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{}\" \
                 defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\"",
                ca.display(),
                cert.display(),
                key.display()
            ))
        );
        conf.push_str(&rules(&out));
        if tls.is_some() {
            conf.push_str(
                "module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" \
                 streamDriver.authMode=\"anon\")\n",
            );
        } else {
            conf.push_str("module(load=\"imtcp\")\n");
        }
        conf.push_str(&format!(
            "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\" ruleset=\"out\")\n"
        ));
        if let Some(port) = udp {
            conf.push_str(&format!(
                "module(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" \
                 port=\"{port}\" ruleset=\"out\")\n"
            ));
        }
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut r = Rsyslog {
            dir,
            conf: conf_path,
            tcp,
            netns: netns.map(Path::to_path_buf),
            child: None,
        };
        r.run();
        r
    }

    /// Starts rsyslogd (again) and waits until it listens.
    pub fn run(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("rsyslogd");
                c
            }
            None => Command::new("rsyslogd"),
        };
        let child = cmd
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("rsyslogd.log")).unwrap(),
            ))
            .spawn()
            .expect("rsyslogd (Debian package rsyslog; hack/ensure-tools.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.listening() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listening(&self) -> bool {
        match &self.netns {
            None => TcpStream::connect(("127.0.0.1", self.tcp)).is_ok(),
            Some(ns) => Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args([
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/127.0.0.1/{}", self.tcp),
                ])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    /// Stops rsyslogd (SIGTERM), keeping what it wrote.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The parsed lines so far.
    pub fn parsed(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("parsed.json"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until `n` lines were parsed, and a moment more to see that no others follow.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.parsed();
            if got.len() >= n {
                std::thread::sleep(Duration::from_millis(300));
                return self.parsed();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} lines arrived: {got:#?}\nrsyslogd: {}",
                got.len(),
                std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Rsyslog {
    /// The first parsed line `ok` accepts, waiting up to `timeout` for it.
    pub fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        self.try_wait_for_line(timeout, ok).unwrap_or_else(|got| {
            panic!(
                "no line {what} within {timeout:?}; got: {got:#?}\nrsyslogd: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
            )
        })
    }

    /// Like [`Rsyslog::wait_for_line`]; `Err` with the lines that arrived.
    pub fn try_wait_for_line(
        &self,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.parsed();
            if let Some(line) = got.iter().find(|l| ok(l)) {
                return Ok(line.clone());
            }
            if Instant::now() >= deadline {
                return Err(got);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
