//! The AIDE configuration language (aide.conf(5), AIDE 0.18): macros, conditionals, includes,
//! groups, options and selection rules. Paths in rules are node paths; `root` maps them onto a
//! mounted host root for `@@if exists`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::attrs::{AttrSet, UNSUPPORTED_HASHES};
use crate::entry::FileType;
use crate::rules::{Rule, RuleKind, Rules};

/// The rules kube-fim applies when a FileIntegrity names no config (shipped in the repo).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default-aide.conf");

/// Options AIDE accepts. They describe AIDE's own database and report handling, which the agent
/// replaces, so they are recorded but do not change what is scanned.
const KNOWN_OPTIONS: &[&str] = &[
    "database",
    "database_in",
    "database_out",
    "database_new",
    "database_attrs",
    "database_add_metadata",
    "log_level",
    "verbose",
    "gzip_dbout",
    "root_prefix",
    "acl_no_symlink_follow",
    "warn_dead_symlinks",
    "config_version",
    "config_check_warn_unrestricted_rules",
    "num_workers",
    "report_url",
    "report_level",
    "report_format",
    "report_base16",
    "report_detailed_init",
    "report_quiet",
    "report_append",
    "report_grouped",
    "grouped",
    "report_summarize_changes",
    "summarize_changes",
    "report_ignore_added_attrs",
    "report_ignore_removed_attrs",
    "report_ignore_changed_attrs",
    "report_force_attrs",
    "report_ignore_e2fsattrs",
];

const MAX_INCLUDE_DEPTH: usize = 16;

// Bounds on hostile input (a FileIntegrity's rules are written by whoever may edit a ConfigMap,
// and the operator parses them). Debian's aide.conf with its 200 snippets is 115 KB, 1,290 rules.
/// Total bytes of config text read, the included files counted.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Files read through `@@include` in total.
pub const MAX_INCLUDED_FILES: usize = 4096;
/// Longest line or `@@define` value after macro expansion.
pub const MAX_EXPANDED_LINE: usize = 64 * 1024;
/// Total bytes produced by macro expansion over the whole config (no exponential blow-up).
pub const MAX_EXPANDED_TOTAL: usize = 8 * 1024 * 1024;
/// Selection rules in one config.
pub const MAX_RULES: usize = 20_000;
pub use crate::rules::MAX_REGEX_BYTES;
/// Characters of config text an error message quotes; included content is quoted shorter still
/// (an include of a secret must not copy it into a status or a log).
const QUOTE_TOP: usize = 80;
const QUOTE_INCLUDED: usize = 8;

/// What the parser may read besides the text it is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// A local aide.conf (the CLI): `@@include` reads this machine's files, `@@if exists` looks
    /// under the root.
    #[default]
    Local,
    /// Rules from the cluster, on a node (the agent daemon): `@@include` is refused (it would
    /// read the agent container's own files, its token among them); `@@if exists` looks under
    /// the node root.
    Node,
    /// The operator validating a FileIntegrity's rules: its own filesystem is never touched.
    /// `@@include` is refused; `@@if exists` is deferred to the nodes (here the condition is
    /// taken as false, so the branch for a missing path is the one validated).
    Operator,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {message}")]
    Line { origin: String, message: String },
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: @@if without @@endif")]
    UnclosedIf { origin: String },
    #[error("{what} (the limit is {limit} bytes)")]
    TooLarge { what: String, limit: usize },
    #[error(
        "the config selects no files: it has no selection rule (a line like `/etc p+u+g+sha512`)"
    )]
    NoRules,
}

/// A parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub rules: Rules,
    pub groups: HashMap<String, AttrSet>,
    pub options: BTreeMap<String, String>,
    /// The config source text, so its digest can be recorded with the baseline.
    pub source: String,
}

/// What the parser needs from the outside world.
#[derive(Debug, Clone, Default)]
pub struct ParseContext {
    /// Host root that node paths live under (for `@@if exists`).
    pub root: Option<PathBuf>,
    /// The `HOSTNAME` macro and the value `@@if hostname` compares with.
    pub hostname: String,
}

impl ParseContext {
    pub fn from_environment(root: Option<PathBuf>) -> ParseContext {
        let hostname = std::env::var("NODE_NAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
        let short = hostname.split('.').next().unwrap_or_default().to_string();
        ParseContext {
            root,
            hostname: short,
        }
    }
}

impl Config {
    /// Parses a local config ([`Mode::Local`]).
    pub fn parse(text: &str, name: &str, ctx: &ParseContext) -> Result<Config, ConfigError> {
        Config::parse_in(text, name, ctx, Mode::Local)
    }

    /// Parses `text` reading only what `mode` allows.
    pub fn parse_in(
        text: &str,
        name: &str,
        ctx: &ParseContext,
        mode: Mode,
    ) -> Result<Config, ConfigError> {
        let mut p = Parser::new(ctx, mode);
        p.count_input(text.len(), name)?;
        p.parse_text(text, name, None, "", 0)?;
        p.finish(text)
    }

    pub fn from_file(path: &Path, ctx: &ParseContext) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let mut p = Parser::new(ctx, Mode::Local);
        p.count_input(text.len(), &path.display().to_string())?;
        p.parse_text(&text, &path.display().to_string(), path.parent(), "", 0)?;
        p.finish(&text)
    }

    pub fn default_rules(ctx: &ParseContext) -> Config {
        Config::parse(DEFAULT_CONFIG, "default-aide.conf", ctx)
            .expect("the shipped default config parses")
    }

    /// Hex SHA-256 of the config text, recorded in the database so a config change is visible.
    pub fn digest(&self) -> String {
        hex::encode(crate::hash::digest_bytes(
            crate::hash::Algorithm::Sha256,
            self.source.as_bytes(),
        ))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

struct Frame {
    /// Lines in this branch are used.
    active: bool,
    /// The enclosing branch was active (an inactive parent keeps both branches inactive).
    parent_active: bool,
    seen_else: bool,
    origin: String,
}

struct Parser<'a> {
    ctx: &'a ParseContext,
    mode: Mode,
    /// Config bytes read so far (the top text and included files).
    input_bytes: usize,
    included_files: usize,
    /// Bytes produced by macro expansion so far.
    expanded_bytes: usize,
    vars: HashMap<String, String>,
    groups: HashMap<String, AttrSet>,
    options: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

impl<'a> Parser<'a> {
    fn new(ctx: &'a ParseContext, mode: Mode) -> Self {
        let mut vars = HashMap::new();
        vars.insert("HOSTNAME".to_string(), ctx.hostname.clone());
        Parser {
            ctx,
            mode,
            input_bytes: 0,
            included_files: 0,
            expanded_bytes: 0,
            vars,
            groups: HashMap::new(),
            options: BTreeMap::new(),
            rules: Vec::new(),
        }
    }

    fn count_input(&mut self, len: usize, name: &str) -> Result<(), ConfigError> {
        self.input_bytes = self.input_bytes.saturating_add(len);
        if self.input_bytes > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                what: format!(
                    "{}: the config text, its includes counted, is too large",
                    quote(name, QUOTE_TOP)
                ),
                limit: MAX_CONFIG_BYTES,
            });
        }
        Ok(())
    }

    fn finish(self, source: &str) -> Result<Config, ConfigError> {
        if self.rules.iter().all(|r| r.kind == RuleKind::Negative) {
            return Err(ConfigError::NoRules);
        }
        Ok(Config {
            rules: Rules::new(self.rules),
            groups: self.groups,
            options: self.options,
            source: source.to_string(),
        })
    }

    fn parse_text(
        &mut self,
        text: &str,
        file: &str,
        base_dir: Option<&Path>,
        rule_prefix: &str,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let mut frames: Vec<Frame> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let origin = format!("{file}:{}", index + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Quoted config text is cut short, shorter still when it comes from an included
            // file (which may be anything readable, a secret among them).
            let err = |message: String| ConfigError::Line {
                origin: origin.clone(),
                message: redact(&message, line, depth > 0),
            };
            let active = frames.last().is_none_or(|f| f.active);
            if let Some(macro_line) = line.strip_prefix("@@").filter(|m| !m.starts_with('{')) {
                let (word, rest) = split_word(macro_line);
                match word {
                    "if" | "ifdef" | "ifndef" | "ifhost" | "ifnhost" => {
                        let cond = if active {
                            let expr = match word {
                                "if" => rest.to_string(),
                                "ifdef" => format!("defined {rest}"),
                                "ifndef" => format!("not defined {rest}"),
                                "ifhost" => format!("hostname {rest}"),
                                _ => format!("not hostname {rest}"),
                            };
                            let expr = self.substitute(&expr).map_err(err)?;
                            self.eval_condition(&expr).map_err(err)?
                        } else {
                            false
                        };
                        frames.push(Frame {
                            active: active && cond,
                            parent_active: active,
                            seen_else: false,
                            origin,
                        });
                    }
                    "else" => {
                        let f = frames
                            .last_mut()
                            .ok_or_else(|| err("@@else without @@if".into()))?;
                        if f.seen_else {
                            return Err(err("second @@else for the same @@if".into()));
                        }
                        f.seen_else = true;
                        f.active = f.parent_active && !f.active;
                    }
                    "endif" => {
                        frames
                            .pop()
                            .ok_or_else(|| err("@@endif without @@if".into()))?;
                    }
                    _ if !active => {}
                    "define" => {
                        let (name, value) = split_word(rest);
                        if name.is_empty() {
                            return Err(err("@@define needs a variable name".into()));
                        }
                        let value = self.substitute(value).map_err(err)?;
                        self.vars.insert(name.to_string(), value);
                    }
                    "undef" => {
                        self.vars.remove(rest.trim());
                    }
                    "include" | "x_include" => {
                        if self.mode != Mode::Local {
                            return Err(err(format!(
                                "@@{word} is not allowed in a FileIntegrity's rules: the operator \
                                 never reads its own files and an agent would read its \
                                 container's, not the node's; put the included rules into the \
                                 ConfigMap itself"
                            )));
                        }
                        if depth + 1 > MAX_INCLUDE_DEPTH {
                            return Err(err(format!(
                                "includes nested deeper than {MAX_INCLUDE_DEPTH}"
                            )));
                        }
                        let args = self.substitute(rest).map_err(err)?;
                        self.include(&args, word == "x_include", base_dir, rule_prefix, depth)
                            .map_err(|e| match e {
                                IncludeError::Here(m) => err(m),
                                IncludeError::Inner(e) => e,
                            })?;
                    }
                    "x_include_setenv" => {}
                    other => return Err(err(format!("unknown macro @@{other}"))),
                }
                continue;
            }
            if !active {
                continue;
            }
            let line = self.substitute(line).map_err(err)?;
            self.parse_statement(&line, &origin, rule_prefix)
                .map_err(err)?;
        }
        if let Some(f) = frames.pop() {
            return Err(ConfigError::UnclosedIf { origin: f.origin });
        }
        Ok(())
    }

    /// Replaces `@@{VAR}`; an undefined variable expands to nothing, as in AIDE. Each result is
    /// bounded ([`MAX_EXPANDED_LINE`]) and so is their total ([`MAX_EXPANDED_TOTAL`]): a chain
    /// of `@@define`s that each double the previous one stops at the limit, not at the memory's.
    fn substitute(&mut self, s: &str) -> Result<String, String> {
        if !s.contains("@@{") {
            return Ok(s.to_string());
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let push = |out: &mut String, piece: &str| {
            if out.len() + piece.len() > MAX_EXPANDED_LINE {
                return Err(format!(
                    "macro expansion makes a line longer than {MAX_EXPANDED_LINE} bytes"
                ));
            }
            out.push_str(piece);
            Ok(())
        };
        while let Some(start) = rest.find("@@{") {
            push(&mut out, &rest[..start])?;
            match rest[start + 3..].find('}') {
                Some(end) => {
                    let name = &rest[start + 3..start + 3 + end];
                    push(
                        &mut out,
                        self.vars.get(name).map(String::as_str).unwrap_or(""),
                    )?;
                    rest = &rest[start + 3 + end + 1..];
                }
                None => {
                    push(&mut out, &rest[start..])?;
                    rest = "";
                }
            }
        }
        push(&mut out, rest)?;
        self.expanded_bytes = self.expanded_bytes.saturating_add(out.len());
        if self.expanded_bytes > MAX_EXPANDED_TOTAL {
            return Err(format!(
                "macro expansion produces more than {MAX_EXPANDED_TOTAL} bytes in total"
            ));
        }
        Ok(out)
    }

    fn eval_condition(&self, expr: &str) -> Result<bool, String> {
        let (word, rest) = split_word(expr.trim());
        match word {
            "not" => Ok(!self.eval_condition(rest)?),
            "defined" => Ok(self.vars.contains_key(rest.trim())),
            "hostname" => Ok(rest.trim() == self.ctx.hostname),
            // The operator never looks at its own filesystem: the nodes decide.
            "exists" if self.mode == Mode::Operator => Ok(false),
            "exists" => {
                let p = rest.trim();
                let on_node = match &self.ctx.root {
                    Some(root) => root.join(p.trim_start_matches('/')),
                    None => PathBuf::from(p),
                };
                Ok(fs::symlink_metadata(on_node).is_ok())
            }
            "" => Err("empty @@if condition".into()),
            other => Err(format!(
                "unknown @@if operator '{other}' (expected not, defined, hostname or exists)"
            )),
        }
    }

    fn include(
        &mut self,
        args: &str,
        allow_exec: bool,
        base_dir: Option<&Path>,
        rule_prefix: &str,
        depth: usize,
    ) -> Result<(), IncludeError> {
        let parts = split_unescaped(args);
        let target = parts
            .first()
            .ok_or_else(|| IncludeError::Here("@@include needs a file or directory".into()))?;
        let path = match base_dir {
            Some(dir) if !Path::new(target).is_absolute() => dir.join(target),
            _ => PathBuf::from(target),
        };
        let files = if parts.len() >= 2 {
            let filter = regex::RegexBuilder::new(&parts[1])
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| {
                    IncludeError::Here(format!(
                        "invalid file-name regex '{}' in @@include: {e}",
                        parts[1]
                    ))
                })?;
            let mut names: Vec<PathBuf> = fs::read_dir(&path)
                .map_err(|e| {
                    IncludeError::Here(format!(
                        "cannot read include directory {}: {e}",
                        path.display()
                    ))
                })?
                .filter_map(|d| d.ok())
                .filter(|d| d.file_type().is_ok_and(|t| t.is_file()))
                .filter(|d| filter.is_match(&d.file_name().to_string_lossy()))
                .map(|d| d.path())
                .collect();
            names.sort();
            names
        } else {
            vec![path.clone()]
        };
        let prefix = format!(
            "{rule_prefix}{}",
            parts.get(2).map(String::as_str).unwrap_or("")
        );
        for file in files {
            self.included_files += 1;
            if self.included_files > MAX_INCLUDED_FILES {
                return Err(IncludeError::Here(format!(
                    "more than {MAX_INCLUDED_FILES} files included"
                )));
            }
            let meta = fs::metadata(&file).map_err(|e| {
                IncludeError::Here(format!("cannot read included file {}: {e}", file.display()))
            })?;
            if allow_exec && meta.permissions().mode() & 0o111 != 0 {
                return Err(IncludeError::Here(format!(
                    "@@x_include of executable {}: kube-fim never runs configuration scripts; \
                     run it yourself and include its output, or make it non-executable",
                    file.display()
                )));
            }
            if meta.len() > (MAX_CONFIG_BYTES - self.input_bytes.min(MAX_CONFIG_BYTES)) as u64 {
                return Err(IncludeError::Inner(ConfigError::TooLarge {
                    what: format!(
                        "{}: the config text, its includes counted, is too large",
                        file.display()
                    ),
                    limit: MAX_CONFIG_BYTES,
                }));
            }
            let text = read(&file).map_err(IncludeError::Inner)?;
            self.count_input(text.len(), &file.display().to_string())
                .map_err(IncludeError::Inner)?;
            self.parse_text(
                &text,
                &file.display().to_string(),
                file.parent(),
                &prefix,
                depth + 1,
            )
            .map_err(IncludeError::Inner)?;
        }
        Ok(())
    }

    fn parse_statement(
        &mut self,
        line: &str,
        origin: &str,
        rule_prefix: &str,
    ) -> Result<(), String> {
        let first = line.chars().next().unwrap_or(' ');
        if matches!(first, '/' | '!' | '=') {
            return self.parse_rule(line, origin, rule_prefix);
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!(
                "cannot parse '{line}': expected a rule (/path ATTRS), an option (name=value) or a group (NAME = ATTRS)"
            ));
        };
        let (name, value) = (name.trim(), value.trim());
        if KNOWN_OPTIONS.contains(&name) {
            self.options.insert(name.to_string(), value.to_string());
            return Ok(());
        }
        // The manual says A-Za-z0-9, but AIDE's lexer (and file-integrity-operator's CONTENT_EX)
        // also take '_'.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "unknown option '{name}' (group names are limited to A-Za-z0-9_)"
            ));
        }
        if AttrSet::builtin(name).is_some() {
            return Err(format!(
                "'{name}' is a built-in attribute or group and cannot be redefined"
            ));
        }
        let attrs = self.parse_attr_expr(value)?;
        self.groups.insert(name.to_string(), attrs);
        Ok(())
    }

    fn parse_rule(&mut self, line: &str, origin: &str, rule_prefix: &str) -> Result<(), String> {
        let tokens = split_unescaped(line);
        let (kind, regex) = match tokens[0].chars().next() {
            Some('!') => (RuleKind::Negative, &tokens[0][1..]),
            Some('=') => (RuleKind::Equals, &tokens[0][1..]),
            _ => (RuleKind::Regular, &tokens[0][..]),
        };
        let regex = format!("{rule_prefix}{regex}");
        if !regex.starts_with('/') {
            return Err(format!("rule '{regex}' must start with '/'"));
        }
        let rest = &tokens[1..];
        let (types, attrs) = match (kind, rest.len()) {
            (RuleKind::Negative, 0) => (None, AttrSet::EMPTY),
            (RuleKind::Negative, 1) => (parse_types(&rest[0])?, AttrSet::EMPTY),
            (RuleKind::Negative, _) => {
                return Err(format!(
                    "negative rule '!{regex}' takes no attributes, found '{}'",
                    rest.join(" ")
                ));
            }
            (_, 0) => {
                return Err(format!(
                    "rule '{regex}' has no attributes (e.g. '{regex} p+u+g+sha512')"
                ));
            }
            (_, 1) => (None, self.parse_attr_expr(&rest[0])?),
            (_, 2) => (parse_types(&rest[0])?, self.parse_attr_expr(&rest[1])?),
            _ => {
                return Err(format!(
                    "too many fields in rule '{line}' (spaces in a path are written '\\ ' or '%20')"
                ));
            }
        };
        if self.rules.len() >= MAX_RULES {
            return Err(format!("more than {MAX_RULES} selection rules"));
        }
        let pattern = decode_percent(&regex);
        let rule = Rule::new(kind, &pattern, attrs, types, origin.to_string())
            .map_err(|e| e.to_string())?;
        self.rules.push(rule);
        Ok(())
    }

    /// `p+u+g+sha512`, `R-m-c`: terms joined by `+` (add) and `-` (remove), left to right.
    fn parse_attr_expr(&self, expr: &str) -> Result<AttrSet, String> {
        let mut set = AttrSet::EMPTY;
        let mut op = '+';
        let mut start = 0;
        let ends = expr
            .char_indices()
            .chain(std::iter::once((expr.len(), '+')));
        for (i, c) in ends.filter(|(_, c)| *c == '+' || *c == '-') {
            let term = &expr[start..i];
            if term.is_empty() {
                return Err(format!("empty term in attribute expression '{expr}'"));
            }
            let value = self.lookup_attr(term)?;
            set = if op == '+' {
                set.union(value)
            } else {
                set.minus(value)
            };
            op = c;
            start = i + 1;
        }
        Ok(set)
    }

    fn lookup_attr(&self, name: &str) -> Result<AttrSet, String> {
        if let Some(a) = AttrSet::builtin(name) {
            return Ok(a);
        }
        if let Some(a) = self.groups.get(name) {
            return Ok(*a);
        }
        if UNSUPPORTED_HASHES.contains(&name) {
            return Err(format!(
                "hash '{name}' is not supported by kube-fim (supported: md5, sha1, sha224, sha256, sha384, sha512, blake3, bee2)"
            ));
        }
        Err(format!("unknown attribute or group '{name}'"))
    }
}

enum IncludeError {
    Here(String),
    Inner(ConfigError),
}

fn parse_types(spec: &str) -> Result<Option<Vec<FileType>>, String> {
    let mut types = Vec::new();
    for part in spec.split(',') {
        match part {
            "0" => return Ok(None),
            "D" | "P" => {} // Solaris doors and event ports do not exist on Linux.
            p if p.len() == 1 => types.push(
                FileType::from_letter(p.chars().next().unwrap_or(' '))
                    .ok_or_else(|| format!("unknown file type '{p}' in restriction '{spec}' (expected f, d, l, c, b, p, s or 0)"))?,
            ),
            _ => return Err(format!("unknown file type '{part}' in restriction '{spec}' (expected f, d, l, c, b, p, s or 0)")),
        }
    }
    Ok(Some(types))
}

/// An error message about config line `line` as it may be shown: quoted text cut short; for a
/// line of an included file, nothing longer than [`QUOTE_INCLUDED`] characters of it at all.
fn redact(message: &str, line: &str, included: bool) -> String {
    if !included {
        return shorten_quotes(message, QUOTE_TOP);
    }
    let shown = shorten_quotes(message, QUOTE_INCLUDED);
    if reveals(&shown, line, QUOTE_INCLUDED) {
        "this line of an included file is not valid (its content is not shown)".to_string()
    } else {
        shown
    }
}

/// Whether `message` holds more than `max` consecutive characters of `line`.
fn reveals(message: &str, line: &str, max: usize) -> bool {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    chars.windows(max + 1).any(|w| {
        let (start, _) = w[0];
        let (last, c) = w[max];
        message.contains(&line[start..last + c.len_utf8()])
    })
}

/// `s` cut to at most `max` characters, marked when cut.
fn quote(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Cuts every '…'-quoted piece of config text in `message` to `max` characters. Every message
/// of this module quotes config text between single quotes.
fn shorten_quotes(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        // The closing quote is the last one before the next ": " or the end (quoted text may
        // itself hold quotes).
        let end = rest
            .find("': ")
            .or_else(|| rest.rfind('\''))
            .unwrap_or(rest.len());
        out.push_str(&quote(&rest[..end], max));
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix('\'') {
            out.push('\'');
            rest = r;
        }
    }
    out.push_str(rest);
    out
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Splits on whitespace, honouring AIDE's escapes `\ ` (space), `\@` and `\\`.
fn split_unescaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ (' ' | '@' | '\\')) => {
                    cur.push(n);
                    chars.next();
                }
                _ => cur.push('\\'),
            },
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// AIDE lets a rule spell any byte as `%XX`; each becomes a literal byte in the regex.
fn decode_percent(regex: &str) -> String {
    let bytes = regex.as_bytes();
    let mut out = String::with_capacity(regex.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_follows = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if bytes[i] == b'%' && hex_follows {
            out.push_str(&format!("\\x{}", &regex[i + 1..i + 3]));
            i += 3;
        } else {
            let c = regex[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests;
