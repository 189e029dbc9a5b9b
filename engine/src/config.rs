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
    pub fn parse(text: &str, name: &str, ctx: &ParseContext) -> Result<Config, ConfigError> {
        let mut p = Parser::new(ctx);
        p.parse_text(text, name, None, "", 0)?;
        p.finish(text)
    }

    pub fn from_file(path: &Path, ctx: &ParseContext) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let mut p = Parser::new(ctx);
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
    vars: HashMap<String, String>,
    groups: HashMap<String, AttrSet>,
    options: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

impl<'a> Parser<'a> {
    fn new(ctx: &'a ParseContext) -> Self {
        let mut vars = HashMap::new();
        vars.insert("HOSTNAME".to_string(), ctx.hostname.clone());
        Parser {
            ctx,
            vars,
            groups: HashMap::new(),
            options: BTreeMap::new(),
            rules: Vec::new(),
        }
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
            let err = |message: String| ConfigError::Line {
                origin: origin.clone(),
                message,
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
                            self.eval_condition(&self.substitute(&expr)).map_err(err)?
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
                        let value = self.substitute(value);
                        self.vars.insert(name.to_string(), value);
                    }
                    "undef" => {
                        self.vars.remove(rest.trim());
                    }
                    "include" | "x_include" => {
                        if depth + 1 > MAX_INCLUDE_DEPTH {
                            return Err(err(format!(
                                "includes nested deeper than {MAX_INCLUDE_DEPTH}"
                            )));
                        }
                        let args = self.substitute(rest);
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
            let line = self.substitute(line);
            self.parse_statement(&line, &origin, rule_prefix)
                .map_err(err)?;
        }
        if let Some(f) = frames.pop() {
            return Err(ConfigError::UnclosedIf { origin: f.origin });
        }
        Ok(())
    }

    /// Replaces `@@{VAR}`; an undefined variable expands to nothing, as in AIDE.
    fn substitute(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("@@{") {
            out.push_str(&rest[..start]);
            match rest[start + 3..].find('}') {
                Some(end) => {
                    let name = &rest[start + 3..start + 3 + end];
                    out.push_str(self.vars.get(name).map(String::as_str).unwrap_or(""));
                    rest = &rest[start + 3 + end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn eval_condition(&self, expr: &str) -> Result<bool, String> {
        let (word, rest) = split_word(expr.trim());
        match word {
            "not" => Ok(!self.eval_condition(rest)?),
            "defined" => Ok(self.vars.contains_key(rest.trim())),
            "hostname" => Ok(rest.trim() == self.ctx.hostname),
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
            let filter = regex::Regex::new(&parts[1]).map_err(|e| {
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
            let text = read(&file).map_err(IncludeError::Inner)?;
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
